"""The sink's web view end to end: edge -> real Mosquitto -> sink with ``sink.http``; the JSON
API and the results files agree, ``/metrics`` parses with prometheus_client's parser and its
counters equal the sink's JSON summary, the HLS restream opens in PyAV (as a player's FFmpeg
would) and yields the composed frames; the edge's metrics equal its summary."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import av
import pytest
from conftest import FAST_CODEC, PREFIX, broker_config
from discover.edge.agent import CameraAgent, run_edge
from discover.edge.config import CameraConfig, EdgeSection
from discover.edge.telemetry import EdgeMetrics
from discover.sink.config import SinkSection
from discover.sink.http.server import LiveServer
from discover.sink.runner import run_sink
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value)] of a Prometheus text exposition."""
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append((s.labels, s.value))
    return out


def edge_section(clip: Path, n: int, **kw: Any) -> EdgeSection:
    return EdgeSection(codec=FAST_CODEC, cameras=[CameraConfig(
        id="cam0", source=str(clip), tasks=["detection"], max_frames=n, rest_interval=5, **kw)])


@pytest.fixture
def live():
    srv = LiveServer("127.0.0.1:0").start()
    yield srv
    srv.stop()


def run_sink_thread(section: SinkSection, cfg: Any, live: LiveServer) -> tuple[threading.Thread,
                                                                              dict[str, Any]]:
    box: dict[str, Any] = {}
    ready = threading.Event()

    def work() -> None:
        try:
            box["summary"] = run_sink(section, cfg, PREFIX, ready=ready, live=live)
        except BaseException as e:  # surfaced in the test
            box["error"] = e
            ready.set()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    assert ready.wait(15), "sink did not connect"
    return t, box


def test_api_metrics_and_restream_match_the_run(broker, clip, tmp_path, live):
    n = 30
    cfg = broker_config(broker.url)
    section = SinkSection(camera="cam0", tasks=["detection"], rest=True, out=tmp_path,
                          composer={"type": "background"}, max_frames=n)
    thread, box = run_sink_thread(section, cfg, live)
    run_edge(edge_section(clip, n), cfg, PREFIX)
    thread.join(60)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    summary = box["summary"]
    assert summary["frames"] == n

    # the API: the camera, its last results as written to disk, health
    status, body = get(live.url + "api/cameras")
    [cam] = json.loads(body)
    assert (status, cam["id"], cam["frames"], cam["last_frame"]) == (200, "cam0", n, n - 1)
    assert (cam["width"], cam["height"]) == (768, 576)
    status, body = get(live.url + "api/cameras/cam0/latest")
    on_disk = json.loads((tmp_path / "cam0" / "results" / f"{n - 1:06d}.json").read_text())
    assert status == 200 and json.loads(body) == on_disk
    status, body = get(live.url + "api/cameras/cam0/overlay")
    shapes = json.loads(body)["shapes"]
    assert {s["label"] for s in shapes} == \
        {d["label"] for d in on_disk["tasks"]["detection"]["detections"]}
    status, body = get(live.url + "api/cameras/nope/latest")
    assert status == 404 and "unknown camera" in json.loads(body)["error"]
    status, body = get(live.url + "healthz")
    assert status == 200 and json.loads(body)["frames"] == n
    status, body = get(live.url + "api/cameras/cam0/snapshot.jpg")
    assert status == 200 and body[:2] == b"\xff\xd8"

    # /metrics: the summary's numbers
    status, body = get(live.url + "metrics")
    m = samples(body.decode())
    assert m["discover_sink_frames_total"] == [({"camera": "cam0", "task": "detection"}, n)]
    by_kind: dict[str, float] = defaultdict(float)
    for labels, v in m["discover_sink_received_bytes_total"]:
        assert labels["camera"] == "cam0"
        by_kind[labels["substream"].split("/")[0]] += v
    assert by_kind == summary["bytes_by_substream"]
    assert m["discover_sink_packets_total"][0][1] == summary["packets"]
    assert sum(v for _, v in m["discover_sink_dropped_packets_total"]) == \
        summary["dropped_packets"]
    assert sum(v for _, v in m["discover_sink_dropped_frames_total"]) == summary["dropped"]
    assert [v for lb, v in m["discover_sink_latency_seconds_count"]] == [n]

    # the restream: an ended HLS playlist whose segments decode to the encoded frames
    rs = live.hub.view("cam0").restream
    with av.open(live.url + "hls/cam0/index.m3u8", timeout=10) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert 0 < len(frames) == rs.frames_encoded <= n
    assert frames[-1].shape == (576, 768, 3)
    status, _ = get(live.url + "hls/cam0/..%2Fetc")
    assert status == 404


def test_edge_metrics_equal_its_summary(broker, clip):
    n = 12
    edge = edge_section(clip, n)
    agent = CameraAgent(edge.cameras[0], edge, broker_config(broker.url), PREFIX)
    metrics = EdgeMetrics([agent])
    summary = agent.run()
    m = samples(generate_latest(metrics.registry).decode())
    assert m["discover_edge_frames_total"] == [({"camera": "cam0"}, n)]
    assert m["discover_edge_published_frames_total"] == [({"camera": "cam0"}, summary["published"])]
    got = {lb["substream"]: v for lb, v in m["discover_edge_bytes_total"]}
    assert got == summary["bytes_by_substream"]
    assert sum(v for _, v in m["discover_edge_dropped_frames_total"]) == summary["dropped"]
    assert [v for _, v in m["discover_edge_latency_seconds_count"]] == [summary["published"]]
    assert m["discover_edge_publish_queue_frames"] == [({"camera": "cam0"}, 0)]
