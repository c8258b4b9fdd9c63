"""The live view in a real browser: headless Debian Chromium driven by Selenium through
Debian's chromium-driver, while the bundled clip streams edge -> Mosquitto -> sink. The page
loads with no console errors, the live picture changes between two screenshots, and the
overlay shows a label the sink produced."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FAST_CODEC, PREFIX, broker_config, wait_until
from discover.edge.agent import run_edge
from discover.edge.config import CameraConfig, EdgeSection
from discover.sink.config import SinkSection
from discover.sink.http.server import LiveServer
from discover.sink.runner import run_sink

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser():  # noqa: ANN201
    """A headless Chromium, or a skip saying what is missing and how to install it."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install -e '.[dev]')")
    if CHROMIUM is None or not Path(DRIVER).is_file():
        why = ("Chromium or its driver is not installed: apt-get install chromium "
               "chromium-driver (tools/setup_env.sh does it as root)")
        if os.environ.get("CI") == "true":  # .ci/run's setup installs them: a skip hides a bug
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.page_load_strategy = "eager"  # the MJPEG picture never finishes loading
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def picture(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.float32)


def test_live_page_in_chromium(broker, clip, tmp_path):
    driver = browser()
    from selenium.webdriver.common.by import By

    cfg = broker_config(broker.url)
    live = LiveServer("127.0.0.1:0").start()
    stop = threading.Event()
    section = SinkSection(camera="cam0", tasks=["detection"], rest=True,
                          composer={"type": "background"}, out=tmp_path, output="none")
    sink = threading.Thread(target=run_sink, args=(section, cfg, PREFIX),
                            kwargs={"stop": stop, "live": live}, daemon=True)
    edge = EdgeSection(codec=FAST_CODEC, cameras=[CameraConfig(
        id="cam0", source=str(clip), tasks=["detection"], rest_interval=5, realtime=True)])
    streamer = threading.Thread(target=run_edge, args=(edge, cfg, PREFIX),
                                kwargs={"stop": stop}, daemon=True)
    try:
        sink.start()
        time.sleep(0.5)  # let the sink subscribe before the first frames go out
        streamer.start()
        wait_until(lambda: live.hub.has("cam0"), 60, "the sink's first frame")
        driver.get(live.url + "view/cam0")
        # the overlay is redrawn every frame: read it in one script call, never via elements
        def overlay() -> tuple[list[str], list[str]] | None:
            shown = driver.execute_script(
                "return [...document.querySelectorAll('#overlay g.shape')].map(g => g.dataset.label)"
                ".concat(['|'], [...document.querySelectorAll('#labels span')]"
                ".map(s => s.textContent))")
            drawn, listed = shown[:shown.index("|")], shown[shown.index("|") + 1:]
            # the page may show a frame with no shapes yet (or between two redraws): poll
            return (drawn, listed) if drawn and listed else None

        drawn, listed = wait_until(overlay, 30, "an overlay shape and its label")
        produced = set()
        for f in (tmp_path / "cam0" / "results").glob("*.json"):
            try:
                doc = json.loads(f.read_text())
            except ValueError:  # being written
                continue
            produced |= {d["label"] for d in doc["tasks"]["detection"]["detections"]}
        assert set(drawn) <= produced, (drawn, produced)
        assert {t.rsplit(" ", 1)[0] for t in listed} <= produced, listed
        img = driver.find_element(By.ID, "live")
        wait_until(lambda: driver.execute_script("return arguments[0].naturalWidth", img) > 0,
                   20, "the live picture")
        first = picture(img.screenshot_as_png)
        changed = wait_until(
            lambda: float(np.abs(picture(img.screenshot_as_png) - first).mean()) > 0.5,
            20, "the live picture to change")
        assert changed
        assert streamer.is_alive(), "the clip ended before the picture was compared"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()
        stop.set()
        streamer.join(30)
        sink.join(30)
        live.stop()
