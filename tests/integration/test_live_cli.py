"""The command line of issue 13: ``discover ground --labels`` (the labels the offline grounder
cannot find, which edges now summarise in one line), ``--http`` / ``--metrics`` bad input,
``discover edge --metrics`` serving while a camera streams, and ``discover demo --serve``."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import urllib.request

from conftest import CLI, CLIP, cli_env, wait_until
from prometheus_client.parser import text_string_to_metric_families


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=cli_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ground_labels_lists_what_the_grounder_cannot_find():
    p = run("ground", "--labels", "--task", "detection", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["grounder"] == "nanodet"
    assert "traffic cone" in report["unmapped"] and "person" not in report["unmapped"]
    assert report["grounded"] + len(report["unmapped"]) == report["labels"]
    assert "person" in report["classes"]["person"]
    # the edge-side notice is one line with the count and the way to list them
    [line] = [ln for ln in p.stderr.splitlines() if "profile labels" in ln]
    assert f"{len(report['unmapped'])} of {report['labels']}" in line
    assert "discover ground --labels" in line and "traffic cone" not in line


def test_bad_listen_addresses_are_one_error_line():
    for args in (["sink", "--http", "localhost:http", "--broker", "mqtt://127.0.0.1:1"],
                 ["edge", "--metrics", "99999", "--source", str(CLIP),
                  "--broker", "mqtt://127.0.0.1:1"]):
        p = run(*args, timeout=60)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "HOST:PORT" in lines[0], \
            p.stderr


def test_edge_metrics_served_while_streaming(broker):
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "edge", "--source", str(CLIP), "--camera", "m0", "--broker", broker.url,
         "--codec", "classical", "--realtime", "--max-frames", "40", "--metrics", str(port),
         "-q"], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL)
    try:
        def frames() -> float:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return 0.0
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name == "discover_edge_frames_total" and s.labels == {"camera": "m0"}:
                        return s.value
            return 0.0

        assert wait_until(frames, 90, "discover_edge_frames_total{camera=m0} above 0") > 0
    finally:
        proc.wait(120)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]


def test_demo_serve_keeps_serving_until_ctrl_c(tmp_path):
    proc = subprocess.Popen(
        [*CLI, "demo", "--serve", "--http", "127.0.0.1:0", "--set", "edge.codec.type=classical",
         "--max-frames", "10", "--out", str(tmp_path), "-q", "--json"], env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        urls, lines = {}, []
        while "done" not in urls:
            line = proc.stderr.readline()
            assert line, f"demo ended early: {''.join(lines)[-2000:]}"
            lines.append(line)
            if m := re.match(r"(viewer|detection) sink web view: (http://\S+)/view/street", line):
                urls[m[1]] = m[2]
            if line.startswith("demo done"):
                urls["done"] = line
        with urllib.request.urlopen(urls["viewer"] + "/api/cameras", timeout=10) as r:
            [cam] = json.loads(r.read())
        assert (cam["id"], cam["frames"]) == ("street", 10)
        with urllib.request.urlopen(urls["viewer"] + "/hls/street/index.m3u8", timeout=10) as r:
            assert b"#EXT-X-ENDLIST" in r.read()  # the ended restream: a recording of the run
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(out.splitlines()[-1])["frames_viewer_sink"] == 10
