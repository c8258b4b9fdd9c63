"""Signed streams end to end over a real Mosquitto: ``discover edge --key-file`` publishes, a sink
with the same key decodes every frame, a sink with another key takes nothing (counted), and a
keyed recorder keeps what verifies; ``discover record`` refuses a bad camera id at once."""

from __future__ import annotations

import subprocess
import threading

from conftest import CLI, PREFIX, SinkThread, broker_config, cli_env
from discover.sdk.recording import read_recording
from discover.sdk.security import StreamKey
from discover.sink.config import SinkSection

from discover.replay import record


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
    good = KeyedSink(section.model_copy(update={"client_id": "good"}), cfg,
                     StreamKey.load(key_file)).start()
    bad = KeyedSink(section.model_copy(update={"client_id": "bad"}), cfg,
                    StreamKey.load(other_file)).start()
    rec_out, rec_ready, rec_result = tmp_path / "rec.dscv", threading.Event(), {}
    rec = threading.Thread(target=lambda: rec_result.update(record(
        cfg, PREFIX, "cam0", rec_out, idle_timeout_s=3.0, ready=rec_ready,
        key=StreamKey.load(key_file))), daemon=True)
    rec.start()
    assert rec_ready.wait(30)
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
        rec.join(60)
    assert ok["frames"] == n and ok["dropped_packets"] == 0
    assert refused["frames"] == 0
    assert refused["drop_reasons"].get("unverifiable", 0) > 0  # no verified meta: no session
    assert bad.indices() == []
    topics = [r.topic for r in read_recording(rec_out)]
    assert rec_result["records"] == len(topics) and topics.count(f"{PREFIX}/cam0/meta") >= 1
    assert rec_result["refused"] == 0
    assert sum(t.endswith("/side") for t in topics) == n


def test_record_refuses_a_bad_camera_id_at_once(tmp_path):
    for bad in ("#", "..", "a/b"):
        r = subprocess.run([*CLI, "record", "--broker", "mqtt://127.0.0.1:1", "--camera", bad,
                            "--out", str(tmp_path / "x.rec")], env=cli_env(),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "bad camera id" in r.stderr, (bad, r.stderr)
        assert "Traceback" not in r.stderr and "unreachable" not in r.stderr

