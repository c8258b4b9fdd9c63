"""Credentials and TLS against a real Mosquitto: the edge and sink authenticate with a password
from the environment, wrong credentials are refused at once with one clear line, and an
mqtts:// link verifies the broker against a given CA."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    CLI,
    CLIP,
    FAST_CODEC,
    PREFIX,
    SinkThread,
    _require_mosquitto,
    broker_config,
    cli_env,
)
from discover.edge.agent import run_edge
from discover.edge.config import CameraConfig, EdgeSection
from discover.sdk.errors import DiscoverError
from discover.sink.config import SinkSection

from discover.broker import LocalBroker

USER, PASSWORD = "gateway7", "s3cret-pw"


@pytest.fixture()
def auth_broker(tmp_path: Path):
    _require_mosquitto()
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), USER, PASSWORD], check=True,
                   capture_output=True)
    b = LocalBroker("mosquitto", extra_conf=f"allow_anonymous false\npassword_file {pw}\n")
    b.start(timeout=10)
    yield b
    b.stop()


def test_password_from_environment_streams(auth_broker, monkeypatch):
    monkeypatch.setenv("DISCOVER_BROKER_PASSWORD", PASSWORD)
    bc = broker_config(auth_broker.url, username=USER)
    sink = SinkThread(SinkSection(camera="cam0", max_frames=5, idle_timeout_s=5), bc).start()
    edge = EdgeSection(codec=FAST_CODEC, cameras=[CameraConfig(id="cam0", source=str(CLIP), max_frames=5)])
    out = run_edge(edge, bc, PREFIX)[0]
    assert out["published"] == 5
    assert sink.finish(20)["frames"] == 5


def test_wrong_password_is_refused_at_once(auth_broker, monkeypatch):
    monkeypatch.setenv("DISCOVER_BROKER_PASSWORD", "wrong")
    bc = broker_config(auth_broker.url, username=USER)
    t0 = time.monotonic()
    with pytest.raises(DiscoverError, match="refused the connection") as e:
        SinkThread(SinkSection(camera="cam0", connect_timeout_s=20), bc).start()
    assert time.monotonic() - t0 < 10  # not the 20 s connect timeout
    assert "wrong" not in str(e.value)
    edge = EdgeSection(codec=FAST_CODEC, cameras=[CameraConfig(id="cam0", source=str(CLIP), max_frames=50)],
                       connect_timeout_s=20)
    with pytest.raises(DiscoverError, match="refused the connection"):
        run_edge(edge, bc, PREFIX)


def test_cli_wrong_password_one_error_line(auth_broker):
    env = {**cli_env(), "DISCOVER_BROKER_PASSWORD": "wrong"}
    url = auth_broker.url.replace("mqtt://", f"mqtt://{USER}@")
    p = subprocess.run([*CLI, "sink", "--camera", "cam0", "--broker", url, "--max-frames", "1"],
                       env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refused" in lines[0], p.stderr
    assert "wrong" not in p.stderr


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> None:
    """A test CA (ca.crt) and a server certificate for 127.0.0.1 (server.crt/key) in ``d``."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=discover-test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=d)


@pytest.fixture()
def tls_broker(tmp_path: Path):
    _require_mosquitto()
    d = tmp_path
    make_certs(d)
    b = LocalBroker("mosquitto", extra_conf=f"cafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\n"
                                            f"keyfile {d / 'server.key'}\n")
    b.start(timeout=10)
    yield b, d / "ca.crt"
    b.stop()


def test_tls_with_the_site_ca(tls_broker):
    b, ca = tls_broker
    bc = broker_config(f"mqtts://127.0.0.1:{b.port}", tls={"ca_file": ca})
    sink = SinkThread(SinkSection(camera="cam0", max_frames=3, idle_timeout_s=5), bc).start()
    out = run_edge(EdgeSection(codec=FAST_CODEC, cameras=[CameraConfig(id="cam0", source=str(CLIP),
                                                     max_frames=3)]), bc, PREFIX)[0]
    assert out["published"] == 3 and sink.finish(20)["frames"] == 3


def test_tls_refuses_an_unknown_broker_certificate(tls_broker):
    b, _ = tls_broker
    bc = broker_config(f"mqtts://127.0.0.1:{b.port}")  # system CAs: the test CA is unknown
    with pytest.raises(DiscoverError, match="unreachable"):
        SinkThread(SinkSection(camera="cam0", connect_timeout_s=2), bc).start()
