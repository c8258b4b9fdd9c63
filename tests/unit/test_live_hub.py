"""The web view's parts without a broker: overlay shapes from each kind of task result, the
hub's per-second rates and JPEG cache, listen-address parsing, and the web app served by a
real LiveServer fed frame reports by hand (API, MJPEG stream headers, 404s, /metrics)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from discover.sdk import masks
from discover.sdk.errors import DiscoverError
from discover.sdk.regions import Region
from discover.sdk.telemetry import parse_listen
from discover.sink.http import overlay
from discover.sink.http.hub import LiveHub
from discover.sink.http.server import LiveServer
from discover.sink.report import FrameReport


def report(frame: int, t: float, camera: str = "cam0", **kw) -> FrameReport:
    img = np.full((48, 64, 3), frame * 20 % 255, np.uint8)
    res = {"detection": {"model": "regions", "detections": [
        {"id": 0, "label": "person", "score": 0.8, "bbox": [4, 6, 10, 20]}]}}
    region = Region(rid=0, box=(4, 6, 14, 26), label="person", score=0.8, tasks=("detection",))
    args = {"camera": camera, "frame": frame, "capture_us": int((t - 0.05) * 1e6), "fps": 10.0,
            "image": img, "results": res, "regions": [region],
            "substream_bytes": {"side": 100, "task/detection": 1000}, "complete": True,
            "has_rest": False, "decoded_at": t}
    return FrameReport(**{**args, **kw})


def test_shapes_from_detections_masks_and_classes():
    m = np.zeros((40, 50), bool)
    m[10:30, 5:25] = True
    results = {
        "detection": {"detections": [{"label": "car", "score": 0.5, "bbox": [1, 2, 3, 4]}]},
        "segmentation": {"masks": [{"label": "person", "score": 0.9, "bbox": [5, 10, 20, 20],
                                    "segmentation": masks.encode(m)}]},
        "classification": {"regions": [{"bbox": [0, 0, 8, 8], "top": [
            {"label": "tabby", "score": 0.7}, {"label": "tiger", "score": 0.1}]}]},
        "scene": {"top": [{"label": "street", "score": 0.6}]},
    }
    got = {s["task"]: s for s in overlay.shapes(results)}
    assert got["detection"]["box"] == [1.0, 2.0, 4.0, 6.0]
    poly = np.array(got["segmentation"]["polygon"])
    assert 4 <= len(poly) <= overlay.MAX_POLYGON_POINTS
    assert poly[:, 0].min() == 5 and poly[:, 0].max() == 24
    assert poly[:, 1].min() == 10 and poly[:, 1].max() == 29
    assert got["classification"]["label"] == "tabby"
    assert got["scene"] == {"task": "scene", "label": "street", "score": 0.6}
    img = np.zeros((40, 50, 3), np.uint8)
    drawn = overlay.draw(img, overlay.shapes(results))
    assert img.max() == 0 and drawn.max() > 0


def test_hub_rates_per_second_and_jpeg_once_per_frame():
    hub = LiveHub(restream=False)
    now = time.time()
    first = int(now) - 2
    for k in range(4):  # two frames in each of two past seconds
        hub.on_frame(report(k, first + k // 2 + 0.1 * k))
    s = hub.series("cam0")
    i = s["t"].index(first)
    assert s["t"][i:i + 2] == [first, first + 1] and s["fps"][i:] == [2, 2] + [0] * (len(s["t"]) - i - 2)
    assert s["kbps"]["task/detection"][i:i + 2] == [16.0, 16.0]  # 2 x 1000 bytes x 8 / 1000
    a, b = hub.jpeg("cam0"), hub.jpeg("cam0")
    assert a[0] is b[0] and a[1] == 4 and a[2].frame == 3
    assert cv2.imdecode(np.frombuffer(a[0], np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)
    [cam] = hub.cameras()
    assert (cam["id"], cam["frames"], cam["last_frame"], cam["tasks"]) == \
        ("cam0", 4, 3, ["detection"])
    assert hub.latest("cam0")["regions"][0]["label"] == "person"
    assert hub.latest("nope") is None and hub.series("nope") is None


@pytest.mark.parametrize("spec, want", [("8080", ("127.0.0.1", 8080)),
                                        (":0", ("127.0.0.1", 0)),
                                        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
                                        ("[::1]:81", ("::1", 81))])
def test_parse_listen(spec, want):
    assert parse_listen(spec, "x") == want


@pytest.mark.parametrize("spec", ["host", "host:http", "70000", "1.2.3.4:-1"])
def test_parse_listen_refuses(spec):
    with pytest.raises(DiscoverError, match="HOST:PORT"):
        parse_listen(spec, "sink.http.listen")


def fetch(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_web_app_serves_api_mjpeg_and_metrics():
    live = LiveServer("127.0.0.1:0", LiveHub(restream=False)).start()
    try:
        assert fetch(live.url + "view/cam0")[0] == 404  # no frame from it yet
        assert json.loads(fetch(live.url + "api/cameras")[2]) == []
        live.hub.on_frame(report(7, time.time()))
        status, headers, body = fetch(live.url + "view/cam0")
        assert status == 200 and b"app.js" in body
        assert b"discover.listPage" in fetch(live.url)[2]
        assert b"cameraPage" in fetch(live.url + "static/app.js")[2]
        with urllib.request.urlopen(live.url + "api/cameras/cam0/mjpeg", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            assert r.readline().strip() == b"--discoverframe"
            part = {}
            while (line := r.readline().strip()):
                k, v = line.decode().split(": ", 1)
                part[k] = v
            jpg = r.read(int(part["Content-Length"]))
        assert part["X-Frame-Index"] == "7" and jpg[:2] == b"\xff\xd8"
        status, headers, body = fetch(live.url + "metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        status, _, body = fetch(live.url + "hls/cam0/index.m3u8")  # restream off
        assert status == 404 and b"unknown camera" in body
    finally:
        live.stop()


def test_listening_on_a_taken_port_is_one_error():
    first = LiveServer("127.0.0.1:0").start()
    try:
        with pytest.raises(DiscoverError, match="cannot listen on 127.0.0.1"):
            LiveServer(f"127.0.0.1:{first.port}").start()
    finally:
        first.stop()
