"""Edge -> real Mosquitto -> sink, in-process: frame accounting, substream selection, retained
descriptor and status, a broker restart mid-stream, and several cameras split over shards."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import discover.edge.agent
import discover.sink.runner
import pytest
from conftest import (
    CLI,
    CLIP_FRAMES,
    CLIP_SIZE,
    FAST_CODEC,
    PREFIX,
    SinkThread,
    assert_recovered,
    broker_config,
    cli_env,
    status_state,
    wait_until,
)
from discover.edge.agent import CameraAgent, run_edge
from discover.edge.config import CameraConfig, EdgeSection
from discover.sdk.config import load_config
from discover.sdk.stream import StreamMeta
from discover.sink.config import SinkSection

from discover.config import Deployment


def one_camera(clip: Path, camera: str = "cam0", **kw: Any) -> EdgeSection:
    cam = {"id": camera, "source": str(clip), "tasks": ["detection"], **kw}
    return EdgeSection(codec=FAST_CODEC, cameras=[CameraConfig(**cam)])


def test_every_frame_arrives_in_order_and_bytes_add_up(broker, clip, tmp_path, collector):
    n = 30
    cfg = broker_config(broker.url)
    results = collector(broker.port, [f"{PREFIX}/cam0/results/detection"])
    sink = SinkThread(SinkSection(camera="cam0", tasks=["detection"], out=tmp_path,
                                  max_frames=n), cfg).start()

    [edge] = run_edge(one_camera(clip, max_frames=n, rest_interval=10), cfg, PREFIX)
    summary = sink.finish(30)

    assert edge["frames"] == n and edge["published"] == n and edge["dropped"] == 0
    assert edge["bytes_by_substream"].get("rest", 0) > 0, "edge sent rest on frames 0, 10, 20"
    assert sink.indices("cam0") == list(range(n))
    assert summary["frames"] == n and summary["dropped"] == 0 and summary["partial"] == 0
    assert summary["complete"] == n
    # the sink never receives rest: not subscribed, so not even counted as unwanted
    assert set(summary["bytes_by_substream"]) == {"side", "task"}
    for sub in ("side", "task"):
        assert summary["bytes_by_substream"][sub] == edge["bytes_by_substream"][sub], sub
    assert summary["bytes"] == edge["bytes"] - edge["bytes_by_substream"]["rest"]
    assert summary["cameras"] == ["cam0"]

    frames = sorted((tmp_path / "cam0" / "frames").glob("*.png"))
    assert [p.name for p in frames] == [f"{i:06d}.png" for i in range(n)]
    docs = sorted((tmp_path / "cam0" / "results").glob("*.json"))
    assert [p.name for p in docs] == [f"{i:06d}.json" for i in range(n)]
    doc = json.loads(docs[0].read_text())
    assert doc["camera"] == "cam0" and doc["frame"] == 0 and doc["complete"] is True
    assert doc["has_rest"] is False and "detection" in doc["tasks"]

    got = results.wait_for(lambda m: len(m) >= n, 10, f"{n} results messages")
    bodies = [json.loads(p) for _, p, _ in got]
    assert [b["frame"] for b in bodies] == list(range(n))
    assert {(b["camera"], b["task"]) for b in bodies} == {("cam0", "detection")}


def test_sink_with_rest_takes_all_three_substreams(broker, clip, tmp_path):
    n = 12
    cfg = broker_config(broker.url)
    sink = SinkThread(SinkSection(camera="cam0", tasks=["detection"], rest=True, out=tmp_path,
                                  max_frames=n), cfg).start()
    [edge] = run_edge(one_camera(clip, max_frames=n, rest_interval=5), cfg, PREFIX)
    summary = sink.finish(30)
    assert summary["frames"] == n and summary["complete"] == n
    assert summary["bytes_by_substream"] == edge["bytes_by_substream"]
    has_rest = {json.loads(p.read_text())["frame"]: json.loads(p.read_text())["has_rest"]
                for p in (tmp_path / "cam0" / "results").glob("*.json")}
    assert has_rest == {i: i % 5 == 0 for i in range(n)}


def test_late_sink_gets_retained_meta_after_the_edge_stopped(broker, clip, collector,
                                                             monkeypatch):
    n = 5
    cfg = broker_config(broker.url)
    agent = CameraAgent(one_camera(clip, max_frames=n).cameras[0], one_camera(clip), cfg, PREFIX)
    summary = agent.run()
    assert summary["frames"] == n

    # a plain subscriber joining now gets the descriptor and the final status, both retained
    c = collector(broker.port, [f"{PREFIX}/cam0/meta", f"{PREFIX}/cam0/status"])
    c.wait_for(lambda m: len(m) >= 2, 5, "retained meta and status")
    [(payload, retained)] = c.on(f"{PREFIX}/cam0/meta")
    assert retained
    meta = StreamMeta.from_json(payload)
    assert (meta.camera, meta.width, meta.height) == ("cam0", *CLIP_SIZE)
    assert meta.tasks == ["detection"] and meta.session == agent.meta.session
    [(status, retained)] = c.on(f"{PREFIX}/cam0/status")
    assert retained and status_state(status) == "offline"

    # and so does a sink started after the edge is gone
    pipes = []

    class Capture(discover.sink.runner.SinkPipeline):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            pipes.append(self)

    monkeypatch.setattr(discover.sink.runner, "SinkPipeline", Capture)
    late = SinkThread(SinkSection(camera="cam0", tasks=["detection"], idle_timeout_s=0.5), cfg)
    late.start()
    wait_until(lambda: pipes and "cam0" in pipes[0].metas, 5, "the late sink to take meta")
    assert pipes[0].metas["cam0"].session == agent.meta.session
    assert late.finish(10)["frames"] == 0


def test_sink_joining_mid_stream_decodes_the_rest_of_it(broker, clip):
    cfg = broker_config(broker.url)
    edge_cfg = one_camera(clip, realtime=True, fps=40)
    agent = CameraAgent(edge_cfg.cameras[0], edge_cfg, cfg, PREFIX)
    seen: list[int] = []
    # frames handed to MQTT: `seen` counts frames given to the publisher, whose queue can hold
    # several more on a loaded machine, and those reach a sink that subscribed after them
    published: list[int] = []
    publish = agent._published
    agent._published = lambda i, t: (published.append(i), publish(i, t))  # type: ignore[method-assign]
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(agent.run(on_frame=seen.append)), daemon=True)
    t.start()
    try:
        wait_until(lambda: len(seen) >= 20, 15, "the edge to stream 20 frames")
        # read before subscribing: frames handed to MQTT while the subscription is set up may
        # (and on a loaded machine do) reach the sink, and they were not sent before it joined
        joined_at = len(published)
        # idle: a loaded machine can stall the edge for seconds; the sink must not stop then
        sink = SinkThread(SinkSection(camera="cam0", tasks=["detection"], idle_timeout_s=8.0),
                          cfg).start()
        t.join(180)  # 80 frames: seconds when idle, over a minute on a loaded 2-core machine
        assert not t.is_alive()
        summary = sink.finish(20)
    finally:
        t.join(5)
    got = sink.indices("cam0")
    assert got, "a sink that joined late decoded nothing (no retained meta?)"
    assert got == sorted(got) and got[-1] == CLIP_FRAMES - 1
    assert got[0] >= joined_at - 2, "decoded frames from before it joined?"
    # everything from its first frame on arrived
    assert got == list(range(got[0], CLIP_FRAMES)), summary
    assert out["frames"] == CLIP_FRAMES


def test_status_online_while_running_offline_on_graceful_stop(broker, clip, collector):
    cfg = broker_config(broker.url)
    status = collector(broker.port, [f"{PREFIX}/cam0/status"])
    stop = threading.Event()
    edge_cfg = one_camera(clip, realtime=True, fps=20)
    agent = CameraAgent(edge_cfg.cameras[0], edge_cfg, cfg, PREFIX)
    t = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    t.start()
    try:
        status.wait_for(lambda m: any(status_state(p) == "online" for _, p, _ in m), 10,
                        "status online")
        assert t.is_alive()
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()
    states = status.wait_for(
        lambda m: [status_state(p) for _, p, _ in m][-1:] == ["offline"], 10,
        "status offline")
    assert [status_state(p) for _, p, _ in states] == ["online", "offline"]


def test_last_will_says_offline_when_the_edge_dies(broker, clip, collector):
    """Kill an edge process (no graceful goodbye): the broker publishes its last will."""
    import subprocess

    status = collector(broker.port, [f"{PREFIX}/cam0/status"])
    proc = subprocess.Popen([*CLI, "edge", "--source", str(clip), "--camera", "cam0",
                             "--realtime", "--broker", broker.url, "-q",
                             "--set", "edge.codec.type=classical"],
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status.wait_for(lambda m: any(status_state(p) == "online" for _, p, _ in m), 20,
                        "status online from the edge process")
        assert proc.poll() is None
        proc.kill()
        proc.wait(10)
        msgs = status.wait_for(
            lambda m: [status_state(p) for _, p, _ in m][-1:] == ["offline"], 10,
            "the last will (status offline)")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()
    assert [status_state(p) for _, p, _ in msgs] == ["online", "offline"]


def test_broker_restart_mid_stream(broker, clip, monkeypatch):
    """Mosquitto goes away for about a second while the edge streams in real time: both ends
    reconnect, the stream goes on, losses are bounded and counted, the edge queue stays bounded."""
    queue_frames = 4
    fps = 20.0
    peak = [0]

    class Watched(discover.edge.agent.FramePublisher):
        def submit(self, frame_index: int, messages: list) -> None:
            super().submit(frame_index, messages)
            peak[0] = max(peak[0], len(self.queue))

    monkeypatch.setattr(discover.edge.agent, "FramePublisher", Watched)
    cfg = broker_config(broker.url)
    sink = SinkThread(SinkSection(camera="cam0", tasks=["detection"], frame_timeout_s=1.0),
                      cfg).start()
    edge_cfg = EdgeSection(queue_frames=queue_frames, codec=FAST_CODEC, cameras=one_camera(
        clip, realtime=True, fps=fps).cameras)
    agent = CameraAgent(edge_cfg.cameras[0], edge_cfg, cfg, PREFIX)
    seen: list[int] = []
    out: dict[str, Any] = {}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            out.update(agent.run(on_frame=seen.append))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        sink.wait_frames(15, 15)
        broker.stop()
        stopped_at = len(seen)
        # the outage: ~1 s of source frames (20 at 20 fps) made while nothing can be sent
        wait_until(lambda: len(seen) >= stopped_at + int(fps), 10, "the edge to go on capturing")
        broker.start()
        restarted_at = len(seen)
        t.join(30)
        assert not t.is_alive(), "edge did not finish after the broker came back"
        assert not errors, errors
        wait_until(lambda: sink.indices()[-1:] == [CLIP_FRAMES - 1], 15,
                   "the sink to decode the last frame")
    finally:
        sink.stop.set()
        t.join(5)
    summary = sink.finish(15)

    assert out["frames"] == CLIP_FRAMES
    assert out["reconnects"] >= 1
    assert out["published"] + out["dropped"] == CLIP_FRAMES, out
    # the outage was longer than the queue: the oldest frames were dropped and counted
    assert out["dropped"] >= restarted_at - stopped_at - queue_frames - 2 > 0, out
    assert peak[0] <= queue_frames

    got = sink.indices("cam0")
    assert got == sorted(set(got)), "frames out of order or duplicated"
    missing = sorted(set(range(CLIP_FRAMES)) - set(got))
    # losses are bounded: only frames around the outage are missing. Before it: what was in
    # flight when the broker died; after it: what the edge made until it reconnected (backoff at
    # most 0.5 s) plus its queue, which it may send before the sink has resubscribed.
    late = restarted_at + int(0.6 * fps) + queue_frames
    assert all(stopped_at - 10 <= i <= late for i in missing), (missing, stopped_at, restarted_at)
    assert set(range(late + 1, CLIP_FRAMES)) <= set(got), "the stream did not go on after restart"
    # and counted: every frame the edge reports dropped is missing at the sink, and the frames
    # missing beyond those (lost inside the dying broker, or sent after the edge reconnected but
    # before the sink had resubscribed) are few
    assert out["dropped"] <= len(missing) + summary["dropped"] + summary["partial"]
    assert len(missing) - out["dropped"] <= queue_frames + int(0.5 * fps) + 3, (missing, out)
    assert summary["frames"] == len(got)
    # the sink counts the gaps it saw in the frame numbers (nothing before its first frame)
    assert summary["missing"] == len([i for i in missing if i > got[0]]), (summary, missing)


def _split_cameras() -> tuple[str, str]:
    a, b = "gate", "lobby"
    s0 = SinkSection(shard="0/2")
    assert s0.in_shard(a) and not s0.in_shard(b), "pick camera ids in different shards"
    return a, b


def _site(tmp_path: Path, url: str, clip: Path, n: int) -> Deployment:
    cam_a, cam_b = _split_cameras()
    config = tmp_path / "site.yaml"
    config.write_text(f"""
prefix: {PREFIX}
broker:
  url: {url}
  reconnect_min_s: 0.1
  reconnect_max_s: 0.5
edge:
  codec: {{type: classical}}
  cameras:
    - {{id: {cam_a}, source: "{clip}", tasks: [detection], max_frames: {n}}}
    - {{id: {cam_b}, source: "{clip}", tasks: [detection], max_frames: {n}}}
sink:
  tasks: [detection]
""")
    dep = load_config(Deployment, config, environ={})
    assert dep.sink.camera == "+" and [c.id for c in dep.edge.cameras] == [cam_a, cam_b]
    return dep


def test_multi_camera_config_one_sink_for_all(broker, clip, tmp_path):
    n = 15
    dep = _site(tmp_path, broker.url, clip, n)
    cam_a, cam_b = (c.id for c in dep.edge.cameras)
    every = SinkThread(dep.sink.model_copy(update={"max_frames": 2 * n}), dep.broker).start()

    summaries = run_edge(dep.edge, dep.broker, dep.prefix)
    assert sorted(s["camera"] for s in summaries) == sorted([cam_a, cam_b])
    assert all(s["frames"] == n and s["dropped"] == 0 for s in summaries)

    res = every.finish(30)
    # no frame lost, not even the first ones sent right after each camera's descriptor
    assert every.indices(cam_a) == list(range(n)) and every.indices(cam_b) == list(range(n))
    assert res["cameras"] == sorted([cam_a, cam_b])
    assert res["bytes"] == sum(s["bytes_by_substream"]["side"] + s["bytes_by_substream"]["task"]
                               for s in summaries)


def test_shards_split_the_cameras(broker, clip, tmp_path, monkeypatch):
    """Two workers with shards 0/2 and 1/2 take one camera each and receive only its data.

    A sharded worker subscribes to a camera's substreams when its descriptor arrives, so the
    cameras are announced first (a short run leaves their retained meta) and the workers are
    given the time to take them; packets sent before that would be lost (known limitation)."""
    n = 15
    dep = _site(tmp_path, broker.url, clip, n)
    cam_a, cam_b = (c.id for c in dep.edge.cameras)
    announce = dep.edge.model_copy(deep=True)
    for c in announce.cameras:
        c.max_frames = 1
    run_edge(announce, dep.broker, dep.prefix)

    pipes: dict[str, Any] = {}

    class Capture(discover.sink.runner.SinkPipeline):
        def __init__(self, section: SinkSection, *a: Any, **kw: Any) -> None:
            super().__init__(section, *a, **kw)
            pipes[section.shard] = self

    monkeypatch.setattr(discover.sink.runner, "SinkPipeline", Capture)
    shards = [SinkThread(dep.sink.model_copy(update={"shard": f"{i}/2", "max_frames": n}),
                         dep.broker).start() for i in range(2)]
    # the worker subscribes to a camera's substreams before it stores its descriptor
    wait_until(lambda: "0/2" in pipes and cam_a in pipes["0/2"].metas and "1/2" in pipes
               and cam_b in pipes["1/2"].metas, 10, "each worker to take its camera")
    assert cam_b not in pipes["0/2"].metas and cam_a not in pipes["1/2"].metas

    summaries = run_edge(dep.edge, dep.broker, dep.prefix)
    by_cam = {s["camera"]: s for s in summaries}
    assert all(s["frames"] == n and s["dropped"] == 0 for s in summaries)

    res = [s.finish(30) for s in shards]
    assert [r["cameras"] for r in res] == [[cam_a], [cam_b]]
    for sink_, mine, other in ((shards[0], cam_a, cam_b), (shards[1], cam_b, cam_a)):
        assert sink_.indices(mine) == list(range(n))
        assert sink_.indices(other) == []
    # each worker received only its own camera's substreams: its bytes are exactly that
    # camera's side and task bytes
    for r, cam in zip(res, (cam_a, cam_b), strict=True):
        edge_b = by_cam[cam]["bytes_by_substream"]
        assert r["bytes"] == edge_b["side"] + edge_b["task"], (r, edge_b)
        assert r["bytes_by_substream"] == {"side": edge_b["side"], "task": edge_b["task"]}


def test_late_sink_asks_a_temporal_edge_for_a_refresh_and_recovers(broker, clip, tmp_path,
                                                                    lacking_reference):
    """Learned codec with temporal prediction (tiny random checkpoint): a sink that joins
    mid-stream lacks the references, asks on <prefix>/<camera>/control, the edge codes the
    next frame intra, and from then on the sink decodes every region."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressai")
    from discover.sdk.codecs.learned.model import DiscoverCodecModel, ModelConfig

    torch.manual_seed(0)
    DiscoverCodecModel(ModelConfig.preset("tiny")).save_pretrained(tmp_path / "ck")
    cfg = broker_config(broker.url)
    codec = {"type": "learned", "checkpoint": str(tmp_path / "ck"), "threads": 1,
             "temporal": {"intra_period": 0}}
    edge_cfg = EdgeSection(codec=codec, cameras=[CameraConfig(
        id="cam0", source=str(clip), tasks=["detection"], realtime=True, fps=20)])
    agent = CameraAgent(edge_cfg.cameras[0], edge_cfg, cfg, PREFIX)
    seen: list[int] = []
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(agent.run(on_frame=seen.append)), daemon=True)
    t.start()
    try:
        wait_until(lambda: len(seen) >= 15, 30, "the edge to stream 15 frames")
        sink = SinkThread(SinkSection(camera="cam0", tasks=["detection"], idle_timeout_s=8.0,
                                      refresh_interval_s=0.2), cfg).start()
        t.join(200)  # 5 s at the clip's pace; a loaded 2-core machine codes ~1 frame/s
        assert not t.is_alive()
        summary = sink.finish(30)
    finally:
        t.join(5)
    got = sink.indices("cam0")
    assert got and got[-1] == CLIP_FRAMES - 1
    assert out["refresh_requests"] >= 1 and summary["refresh_requests"] >= 1, (out, summary)
    assert out["intra_frames"] >= 2  # the first frame and the requested refresh
    # a refresh also brings a full view (rest) for a viewer that composes on the background
    assert out["rest_frames"].get("requested", 0) >= 1, out
    # between refreshes regions are predicted (residual or skipped), not coded afresh
    modes = out["region_modes"]
    assert modes.get("residual", 0) + modes.get("skip", 0) > modes.get("intra", 0), modes
    assert_recovered(lacking_reference, got, summary)
