"""``python -m discover`` as a user runs it: bad input gives one ``error:`` line and a non-zero
exit, never a traceback; good runs print one JSON line with ``--json``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, CLIP, cli_env

from discover.broker import free_port


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=cli_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_error_line(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


def dead_broker() -> str:
    """A loopback port with nothing listening."""
    return f"mqtt://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("bad") / "notes.txt"
    p.write_text("this is not a video\n" * 50)
    return p


BAD_EDGE = {
    "missing video": (["--source", "/nonexistent/clip.mp4"], ["/nonexistent/clip.mp4"]),
    "unknown task": (["--source", str(CLIP), "--task", "nosuchtask"], ["nosuchtask"]),
    "unknown grounder": (["--source", str(CLIP), "--grounder", "nosuchgrounder"],
                         ["nosuchgrounder"]),
    "unknown codec": (["--source", str(CLIP), "--codec", "nosuchcodec"], ["nosuchcodec"]),
    "bad broker url": (["--source", str(CLIP), "--broker", "mqtt://:notaport"],
                       ["mqtt://:notaport"]),
    "bad --set key": (["--source", str(CLIP), "--set", "edge.nosuchkey=1"], ["edge.nosuchkey"]),
    "zero max frames": (["--source", str(CLIP), "--max-frames", "0"], ["--max-frames"]),
    "negative rest interval": (["--source", str(CLIP), "--rest-interval", "-1"],
                               ["--rest-interval"]),
    "rest-on-change over 1": (["--source", str(CLIP), "--rest-on-change", "5"],
                              ["--rest-on-change", "between 0"]),
}


@pytest.mark.parametrize("case", list(BAD_EDGE))
def test_edge_bad_input(case):
    args, needles = BAD_EDGE[case]
    if "--broker" not in args:
        args = [*args, "--broker", dead_broker()]
    if "--max-frames" not in args:
        args = [*args, "--max-frames", "3"]
    assert_one_error_line(run("edge", *args, "--set", "edge.connect_timeout_s=1"), *needles)


@pytest.mark.parametrize("name", ["notes.txt", "clip.mp4"])
def test_edge_text_file_as_video(text_file, name):
    # FFmpeg happily renders a .txt file as ANSI-art video; the edge must refuse it
    src = text_file.with_name(name)
    src.write_bytes(text_file.read_bytes())
    assert_one_error_line(run("edge", "--source", str(src), "--broker", dead_broker(),
                              "--set", "edge.connect_timeout_s=1"), str(src))


def test_edge_broker_unreachable():
    url = dead_broker()
    p = run("edge", "--source", str(CLIP), "--max-frames", "5", "--broker", url,
            "--set", "edge.connect_timeout_s=1")
    assert_one_error_line(p, "unreachable", url.split("//")[1])


def test_sink_broker_unreachable(tmp_path):
    url = dead_broker()
    p = run("sink", "--camera", "cam0", "--task", "detection", "--out", str(tmp_path),
            "--broker", url, "--set", "sink.connect_timeout_s=1")
    assert_one_error_line(p, "unreachable", url.split("//")[1])


def test_sink_bad_broker_url(tmp_path):
    assert_one_error_line(run("sink", "--task", "detection", "--out", str(tmp_path),
                              "--broker", "mqtt://:notaport"), "mqtt://:notaport")


def test_sink_unknown_composer(tmp_path):
    assert_one_error_line(run("sink", "--task", "detection", "--composer", "nosuchcomposer",
                              "--broker", dead_broker()), "nosuchcomposer")


def test_replay_not_a_recording(text_file, tmp_path):
    assert_one_error_line(run("replay", str(text_file), "--sink", "--task", "detection",
                              "--out", str(tmp_path)), str(text_file), "not a DISCOVER recording")


def test_replay_missing_file(tmp_path):
    missing = tmp_path / "nope.rec"
    assert_one_error_line(run("replay", str(missing), "--sink", "--task", "detection"),
                          str(missing))


def test_replay_video_is_not_a_recording():
    assert_one_error_line(run("replay", str(CLIP), "--broker", dead_broker()),
                          "not a DISCOVER recording")


def test_replay_speed_must_be_positive(tmp_path):
    from discover.sdk.recording import RecordingWriter

    with RecordingWriter(tmp_path / "one.rec") as w:
        w.write(0.0, "discover/cam0/status", b"{}")
    assert_one_error_line(run("replay", str(tmp_path / "one.rec"), "--speed", "0", "--sink",
                              "--task", "detection"), "--speed")


def test_bad_config_file(tmp_path):
    cfg = tmp_path / "site.yaml"
    cfg.write_text("edge: [unclosed\n")
    assert_one_error_line(run("edge", "--config", str(cfg)), str(cfg))


def test_edge_json_summary_against_the_broker(broker):
    p = run("edge", "--source", str(CLIP), "--camera", "cam0", "--max-frames", "5",
            "--broker", broker.url, "--json")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1, p.stdout
    s = json.loads(lines[0])
    assert s["frames"] == 5 and s["published"] == 5 and s["dropped"] == 0
    assert s["camera"] == "cam0" and s["bytes"] > 0 and s["reconnects"] == 0


@pytest.mark.slow
def test_demo(tmp_path):
    out = tmp_path / "demo"
    p = run("demo", "--out", str(out), "--max-frames", "12", "--json", timeout=180)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1, p.stdout
    s = json.loads(lines[0])
    assert s["frames"] == 12 and s["codec"] == "video"  # the default codec, end to end
    assert s["frames_detection_sink"] == 12 and s["frames_viewer_sink"] == 12
    assert s["dropped"] == 0 and s["broker"] == "mosquitto"
    # the default video codec's task stream is the whole view: no rest, the viewer uses it
    assert s["bytes_by_substream"].get("rest", 0) == 0 and s["bytes_by_substream"]["task"] > 0
    preview = out / "preview.png"
    assert preview.is_file() and preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for sink in ("detection", "viewer"):
        frames = sorted((out / sink / "street" / "frames").glob("*.png"))
        assert [f.name for f in frames] == [f"{i:06d}.png" for i in range(12)], sink
        assert len(list((out / sink / "street" / "results").glob("*.json"))) == 12
    assert json.loads((out / "summary.json").read_text())["frames"] == 12


def test_profile_cached_needs_no_network_or_key():
    p = run("profile", "--task", "vehicles", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["cached"] is True and out["labels"] >= 100 and out["task"] == "vehicles"


def test_profile_new_task_without_key_is_one_error_line(tmp_path):
    p = subprocess.run([*CLI, "profile", "--task", "dogs", "--description", "count dogs",
                        "--out", str(tmp_path)], env={**cli_env(), "OPENAI_API_KEY": ""},
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert_one_error_line(p, "OPENAI_API_KEY")
    assert not list(tmp_path.iterdir())  # nothing half-written
