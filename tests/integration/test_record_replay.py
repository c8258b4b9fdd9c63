"""Record a live stream from a real Mosquitto, then replay it into a sink with no broker, to a
fresh broker, and through the CLI: the frames come out byte-identical to the live sink's."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI, CLIP, FAST_CODEC, PREFIX, SinkThread, broker_config, cli_env
from discover.edge.agent import run_edge
from discover.edge.config import CameraConfig, EdgeSection
from discover.sdk.errors import DiscoverError
from discover.sdk.recording import read_recording
from discover.sink.config import SinkSection

from discover.replay import record, replay_to_broker, replay_to_sink

N = 20


def pngs(folder: Path, camera: str = "cam0") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / camera / "frames").glob("*.png"))}


#: the recorder stops this long after the last message; a loaded 2-core machine can pause the
#: edge for over a second mid-stream, which must not end the recording early
IDLE_S = 5.0


@pytest.fixture(scope="module")
def recorded(module_broker, tmp_path_factory) -> dict[str, Any]:
    """A live edge -> broker -> sink run of N frames, recorded at the same time (once for the
    module; the tests only read it and write to their own folders)."""
    broker, clip = module_broker, CLIP
    tmp_path = tmp_path_factory.mktemp("record")
    cfg = broker_config(broker.url)
    live = SinkThread(SinkSection(camera="cam0", tasks=["detection"], out=tmp_path / "live",
                                  max_frames=N), cfg).start()
    rec_file = tmp_path / "cam0.rec"
    ready, stop = threading.Event(), threading.Event()
    rec: dict[str, Any] = {}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            rec.update(record(cfg, PREFIX, "cam0", rec_file, idle_timeout_s=IDLE_S, stop=stop,
                              ready=ready))
        except BaseException as e:
            errors.append(e)
            ready.set()

    t = threading.Thread(target=work, name="test-recorder", daemon=True)
    t.start()
    assert ready.wait(15) and not errors, errors

    edge = EdgeSection(codec=FAST_CODEC, cameras=[CameraConfig(id="cam0", source=str(clip), max_frames=N,
                                             rest_interval=5)])
    [edge_summary] = run_edge(edge, cfg, PREFIX)
    live_summary = live.finish(30)
    t.join(20 + IDLE_S)  # the recorder stops IDLE_S after the last message
    if t.is_alive():
        stop.set()
        t.join(5)
        pytest.fail("recorder did not stop on its idle timeout")
    assert not errors, errors
    assert edge_summary["frames"] == N and edge_summary["dropped"] == 0
    assert live_summary["frames"] == N and live.indices() == list(range(N))
    return {"file": rec_file, "live": pngs(tmp_path / "live"), "record": rec,
            "edge": edge_summary, "live_summary": live_summary, "tmp": tmp_path}


def test_recording_holds_the_whole_stream(recorded):
    records = list(read_recording(recorded["file"]))
    assert len(records) == recorded["record"]["records"]
    assert recorded["record"]["bytes"] == recorded["file"].stat().st_size
    topics = [r.topic for r in records]
    # the edge announces itself first (its on-connect publishes), in order
    assert topics[:2] == [f"{PREFIX}/cam0/meta", f"{PREFIX}/cam0/status"]
    assert topics[-1] == f"{PREFIX}/cam0/status", "the goodbye (offline) is recorded last"
    assert not any("/results/" in t for t in topics), "results are not part of the stream"
    times = [r.t for r in records]
    assert times == sorted(times) and times[0] == 0.0
    # every byte the edge published is in the recording, rest included
    by_sub: dict[str, int] = {}
    for r in records:
        ch = r.topic.split("/", 2)[2]
        if ch in ("side", "rest") or ch.startswith("task/"):
            key = "task" if ch.startswith("task/") else ch
            by_sub[key] = by_sub.get(key, 0) + len(r.payload)
    assert by_sub == recorded["edge"]["bytes_by_substream"]


def test_replay_to_sink_gives_the_live_frames_byte_for_byte(recorded):
    out = recorded["tmp"] / "replayed"
    seen: list[int] = []
    summary = replay_to_sink(recorded["file"],
                             SinkSection(camera="cam0", tasks=["detection"], out=out),
                             PREFIX, speed=None, on_frame=lambda c, i, img: seen.append(i))
    assert seen == list(range(N))
    assert summary["frames"] == N and summary["dropped"] == 0
    assert summary["bytes"] == recorded["live_summary"]["bytes"]
    assert "rest" not in summary["bytes_by_substream"]
    replayed = pngs(out)
    assert list(replayed) == [f"{i:06d}.png" for i in range(N)]
    assert replayed == recorded["live"]
    live_results = recorded["tmp"] / "live" / "cam0" / "results"
    for p in sorted((out / "cam0" / "results").glob("*.json")):
        a, b = json.loads(p.read_text()), json.loads((live_results / p.name).read_text())
        assert a["regions"] == b["regions"] and a["tasks"] == b["tasks"]


def test_replay_to_a_fresh_broker_gives_the_live_frames(recorded, broker_factory):
    broker = broker_factory()  # no retained meta here: the recording must carry it
    cfg = broker_config(broker.url)
    out = recorded["tmp"] / "rebroadcast"
    sink = SinkThread(SinkSection(camera="cam0", tasks=["detection"], out=out, max_frames=N),
                      cfg).start()
    sent = replay_to_broker(recorded["file"], cfg, speed=None)
    assert sent["messages"] == recorded["record"]["records"]
    summary = sink.finish(30)
    assert sink.indices() == list(range(N))
    assert summary["frames"] == N and summary["dropped"] == 0
    assert pngs(out) == recorded["live"]


def test_replayed_stream_serves_late_sinks(recorded, broker_factory, collector):
    """The recorder joined before the edge, so it got meta live (retain flag cleared); the
    replayed stream must still leave meta (and status) retained, like the live one."""
    records = list(read_recording(recorded["file"]))
    assert not any(r.retain for r in records if r.topic.endswith("/meta"))
    broker = broker_factory()
    replay_to_broker(recorded["file"], broker_config(broker.url), speed=None)
    c = collector(broker.port, [f"{PREFIX}/cam0/meta", f"{PREFIX}/cam0/status"])
    msgs = c.wait_for(lambda m: len(m) >= 2, 5, "retained meta and status after a replay")
    assert {t.rsplit("/", 1)[1] for t, _, retained in msgs if retained} == {"meta", "status"}


def test_replay_keeps_the_original_pace(recorded):
    records = list(read_recording(recorded["file"]))
    span = records[-1].t
    assert span > 0.1, "recording too short to check pacing"
    t0 = time.monotonic()
    summary = replay_to_sink(recorded["file"], SinkSection(camera="cam0", tasks=["detection"]),
                             PREFIX, speed=4.0)
    took = time.monotonic() - t0
    assert summary["frames"] == N
    assert took >= span / 4.0 * 0.9, (took, span)


def test_cli_replay_to_sink_prints_a_json_summary(recorded):
    out = recorded["tmp"] / "cli"
    p = subprocess.run([*CLI, "replay", str(recorded["file"]), "--sink", "--task", "detection",
                        "--out", str(out), "--json", "-q"],
                       env=cli_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout
    summary = json.loads(lines[0])
    assert summary["frames"] == N and summary["dropped"] == 0
    assert pngs(out) == recorded["live"]


def test_replay_of_a_truncated_recording_decodes_what_is_whole(recorded, tmp_path):
    data = recorded["file"].read_bytes()
    cut = tmp_path / "cut.rec"
    cut.write_bytes(data[: len(data) * 2 // 3])
    summary = replay_to_sink(cut, SinkSection(camera="cam0", tasks=["detection"]), PREFIX)
    assert 0 < summary["frames"] < N


def test_replay_of_an_empty_recording_is_a_clear_error(tmp_path):
    from discover.sdk.recording import RecordingWriter

    RecordingWriter(tmp_path / "empty.rec").close()
    with pytest.raises(DiscoverError, match="holds no messages"):
        replay_to_sink(tmp_path / "empty.rec", SinkSection(tasks=["detection"]), PREFIX)
