"""Signed streams end to end over a real Mosquitto: ``discover edge --key-file`` publishes, a sink
with the same key decodes every frame, a sink with another key and one recording with it take
nothing (counted), and ``discover record --key-file`` keeps only what verifies."""

from __future__ import annotations

import json
import subprocess

from conftest import CLI, PREFIX, SinkThread, broker_config, cli_env
from discover.sdk.recording import read_recording
from discover.sdk.security import StreamKey
from discover.sink.config import SinkSection


class KeyedSink(SinkThread):
    """A sink thread whose worker holds a stream key."""

    def __init__(self, section, broker, key: StreamKey) -> None:
        super().__init__(section, broker)
        self.key = key

    def _run(self) -> None:
        from discover.sink.runner import run_sink

        try:
            self.result = run_sink(self.section, self.broker, self.prefix, stop=self.stop,
                                   ready=self.ready, on_frame=self._on_frame, key=self.key)
        except BaseException as e:
            self.error = e
        finally:
            self.ready.set()
            with self._cond:
                self._cond.notify_all()


def test_keyed_edge_and_sinks_over_mosquitto(broker, clip, tmp_path):
    n = 6
    key_file, other_file = tmp_path / "stream.key", tmp_path / "other.key"
    key_file.write_text("deployment-secret-0123456789abcdef\n")
    other_file.write_text("another-deployment-secret-xyz-0123\n")
    cfg = broker_config(broker.url)
    section = SinkSection(camera="cam0", tasks=["detection"], idle_timeout_s=3.0,
                          output="none")
    good = KeyedSink(section, cfg, StreamKey.load(key_file)).start()
    bad = KeyedSink(section, cfg, StreamKey.load(other_file)).start()
    rec_out = tmp_path / "rec.dscv"
    rec = subprocess.Popen([*CLI, "record", "--broker", broker.url, "--camera", "cam0",
                            "--out", str(rec_out), "--idle-timeout", "3", "--json", "-q",
                            "--key-file", str(key_file)],
                           env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        edge = subprocess.run(
            [*CLI, "edge", "--broker", broker.url, "--source", str(clip), "--camera", "cam0",
             "--max-frames", str(n), "--codec", "classical", "--grounder", "motion",
             "--key-file", str(key_file), "--json", "-q"],
            env=cli_env(), capture_output=True, text=True, timeout=120)
        assert edge.returncode == 0, edge.stderr
        good.wait_frames(n, 30)
        ok, refused = good.finish(30), bad.finish(30)
    finally:
        out, err = rec.communicate(timeout=60)
    assert ok["frames"] == n and ok["dropped_packets"] == 0
    assert refused["frames"] == 0
    assert refused["drop_reasons"].get("unverifiable", 0) > 0  # no verified meta: no session
    assert bad.indices() == []
    summary = json.loads(out.strip().splitlines()[-1])
    assert rec.returncode == 0, err
    topics = [r.topic for r in read_recording(rec_out)]
    assert summary["records"] == len(topics) and topics.count(f"{PREFIX}/cam0/meta") >= 1
    assert sum(t.endswith("/side") for t in topics) == n


def test_record_refuses_a_bad_camera_id_at_once(tmp_path):
    for bad in ("#", "..", "a/b"):
        r = subprocess.run([*CLI, "record", "--broker", "mqtt://127.0.0.1:1", "--camera", bad,
                            "--out", str(tmp_path / "x.rec")], env=cli_env(),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "bad camera id" in r.stderr, (bad, r.stderr)
        assert "Traceback" not in r.stderr and "unreachable" not in r.stderr

