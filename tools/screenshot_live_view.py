"""Take docs/live-view.png: the bundled clip streams edge -> local broker -> viewer sink with
the web view, and headless Chromium (Selenium + chromium-driver) photographs the camera page
after ``--seconds`` of streaming. ``python tools/screenshot_live_view.py [--codec video]``."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from discover.edge.agent import run_edge
from discover.edge.config import CameraConfig, EdgeSection
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.transport.broker import BrokerConfig
from discover.sink.config import SinkSection
from discover.sink.http.server import LiveServer
from discover.sink.runner import run_sink
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from discover.broker import LocalBroker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--codec", default="classical")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=Path("docs/live-view.png"))
    a = p.parse_args()
    broker = LocalBroker("auto").start()
    cfg = BrokerConfig(url=broker.url)
    live = LiveServer("127.0.0.1:0").start()
    stop = threading.Event()
    section = SinkSection(camera="street", tasks=["detection"], rest=True,
                          composer={"type": "background"})
    sink = threading.Thread(target=run_sink, args=(section, cfg, "discover"),
                            kwargs={"stop": stop, "live": live}, daemon=True)
    sink.start()
    time.sleep(1.0)
    edge = EdgeSection(codec={"type": a.codec}, cameras=[CameraConfig(
        id="street", source=str(SAMPLE_CLIP), tasks=["detection"], rest_interval=10,
        realtime=True)])
    streamer = threading.Thread(target=run_edge, args=(edge, cfg, "discover"),
                                kwargs={"stop": stop}, daemon=True)
    streamer.start()
    while not live.hub.has("street"):
        time.sleep(0.1)
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1440,800",
                "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.page_load_strategy = "eager"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(live.url + "view/street")
        time.sleep(a.seconds)
        driver.save_screenshot(str(a.out))
    finally:
        driver.quit()
        stop.set()
        streamer.join(30)
        sink.join(30)
        live.stop()
        broker.stop()
    print(a.out)


if __name__ == "__main__":
    main()
