"""``python -m discover.bench.live``: how far the live view runs behind the sink, on loopback.

Streams the bundled clip at its own pace (edge -> local broker -> sink with the web view) and
reads the MJPEG stream as a browser would; each part's headers say when the sink finished that
frame (``X-Decoded-At``) and when it was captured, so per frame it reports::

    behind_sink_ms      part received - sink finished the frame (JPEG encode + HTTP)
    capture_to_view_ms  part received - frame captured (the whole chain)

and how many of the sink's frames the viewer saw. Also fetches the HLS playlist at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from typing import Any

import numpy as np

from discover.broker import LocalBroker
from discover.edge.agent import run_edge
from discover.edge.config import CameraConfig, EdgeSection
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.transport.broker import BrokerConfig
from discover.sink.config import SinkSection
from discover.sink.http.server import LiveServer
from discover.sink.runner import run_sink


def _read_mjpeg(url: str, stop: threading.Event, out: list[dict[str, float]]) -> None:
    with urllib.request.urlopen(url, timeout=30) as r:
        r.readline()
        while not stop.is_set():
            head: dict[str, str] = {}
            while (line := r.readline().strip()):
                k, v = line.decode().split(": ", 1)
                head[k] = v
            if not head:
                return
            r.read(int(head["Content-Length"]) + 2)
            now = time.time()
            r.readline()  # the boundary after the picture
            out.append({"frame": int(head["X-Frame-Index"]), "t": now,
                        "decoded": float(head["X-Decoded-At"]),
                        "capture": int(head["X-Capture-Us"]) / 1e6})


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 1)


def run(frames: int, codec: str) -> dict[str, Any]:
    broker = LocalBroker("auto").start()
    live = LiveServer("127.0.0.1:0").start()
    stop = threading.Event()
    cfg = BrokerConfig(url=broker.url)
    section = SinkSection(camera="street", tasks=["detection"], rest=True,
                          composer={"type": "background"}, max_frames=frames,
                          idle_timeout_s=60.0)
    ready = threading.Event()
    summary: dict[str, Any] = {}
    sink = threading.Thread(target=lambda: summary.update(run_sink(
        section, cfg, "discover", ready=ready, live=live)), daemon=True)
    seen: list[dict[str, float]] = []
    try:
        sink.start()
        ready.wait(30)
        edge = EdgeSection(codec={"type": codec}, cameras=[CameraConfig(
            id="street", source=str(SAMPLE_CLIP), tasks=["detection"], max_frames=frames,
            realtime=True)])
        streamer = threading.Thread(target=run_edge, args=(edge, cfg, "discover"), daemon=True)
        streamer.start()
        while not live.hub.has("street"):
            time.sleep(0.05)
        reader = threading.Thread(target=_read_mjpeg, args=(
            live.url + "api/cameras/street/mjpeg", stop, seen), daemon=True)
        reader.start()
        streamer.join()
        sink.join(120)
        stop.set()
        with urllib.request.urlopen(live.url + "hls/street/index.m3u8", timeout=10) as r:
            playlist = r.read().decode()
    finally:
        stop.set()
        live.stop()
        broker.stop()
    behind = [1000 * (s["t"] - s["decoded"]) for s in seen]
    chain = [1000 * (s["t"] - s["capture"]) for s in seen]
    return {"codec": codec, "frames_sink": summary.get("frames"), "frames_viewed": len(seen),
            "behind_sink_ms_p50": _pct(behind, 50), "behind_sink_ms_p95": _pct(behind, 95),
            "capture_to_view_ms_p50": _pct(chain, 50), "capture_to_view_ms_p95": _pct(chain, 95),
            "sink_latency_ms_p50": summary.get("latency_ms_p50"),
            "hls_segments": playlist.count(".ts"), "hls_ended": "#EXT-X-ENDLIST" in playlist}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m discover.bench.live", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=100, help="frames of the clip (default 100)")
    p.add_argument("--codec", default="classical", help="the edge's codec (default classical)")
    a = p.parse_args(argv)
    print(json.dumps(run(a.frames, a.codec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
