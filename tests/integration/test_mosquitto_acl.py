"""The example broker config (configs/mosquitto/: TLS, passwords, the topic ACL, persistence)
run by a real Mosquitto: an edge streams to a sink over TLS as its camera's user, and what the
ACL forbids (an edge publishing another camera's stream, a sink publishing a stream descriptor)
never reaches a subscriber. Denied publishes are checked through retained messages: Mosquitto
acks them (QoS 1) but keeps nothing, so a fresh subscriber sees exactly what was allowed."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import CLIP, FAST_CODEC, PREFIX, SinkThread, _require_mosquitto, broker_config
from discover.edge.agent import run_edge
from discover.edge.config import CameraConfig, EdgeSection
from discover.sink.config import SinkSection
from paho.mqtt.enums import CallbackAPIVersion
from test_broker_security import make_certs

from discover.broker import free_port, wait_port

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "mosquitto"
USERS = {"cam0": "pw-cam0", "sink": "pw-sink", "viewer": "pw-viewer"}


@pytest.fixture()
def site_broker(tmp_path: Path):
    """Mosquitto on the example files, with this test's certificates, passwords and port."""
    exe = _require_mosquitto()
    d = tmp_path
    make_certs(d)
    pw = d / "discover.passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(pw), user,
                        password], check=True, capture_output=True)
    (d / "data").mkdir()
    port = free_port()
    conf = (EXAMPLE / "mosquitto.conf").read_text()
    conf = conf.replace("/etc/mosquitto/certs/", f"{d}/").replace("/etc/mosquitto/", f"{EXAMPLE}/")
    conf = conf.replace(f"{EXAMPLE}/discover.passwd", str(pw))
    conf = conf.replace("/var/lib/mosquitto/", f"{d}/data/")
    conf = re.sub(r"^listener 8883$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        conf += "user root\n"  # as root Mosquitto would drop to a user that cannot read tmp
    (d / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([exe, "-c", str(d / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if not wait_port(port, 10):
        proc.kill()
        pytest.fail(f"mosquitto did not start on the example config: "
                    f"{proc.stderr.read().decode()[-500:]}")
    yield port, d / "ca.crt"
    proc.terminate()
    proc.wait(10)


def client(port: int, ca: Path, user: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    c.username_pw_set(user, USERS[user])
    c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    return c


def publish_retained(port: int, ca: Path, user: str, topic: str) -> None:
    c = client(port, ca, user)
    try:
        c.publish(topic, b"forged?", qos=1, retain=True).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def retained(port: int, ca: Path, user: str, topic: str) -> list[str]:
    """Topics of the retained messages ``user`` gets on subscribing to ``topic``."""
    got: list[str] = []
    c = client(port, ca, user)
    c.on_message = lambda cl, ud, msg: got.append(msg.topic) if msg.retain else None
    try:
        c.subscribe(topic, qos=1)
        # the broker sends the retained messages right after SUBACK, before it acks anything
        # we publish after subscribing (even a denied publish is acked): a bound without sleep
        c.publish(f"{PREFIX}/_probe", b"", qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def test_edge_and_sink_stream_over_tls_with_the_example_acl(site_broker, monkeypatch):
    port, ca = site_broker
    url = f"mqtts://127.0.0.1:{port}"
    # each link reads its password when it is made: the sink's first, then the edge's
    monkeypatch.setenv("DISCOVER_BROKER_PASSWORD", USERS["sink"])
    sink = SinkThread(SinkSection(camera="cam0", max_frames=3, idle_timeout_s=5),
                      broker_config(url, username="sink", tls={"ca_file": ca})).start()
    monkeypatch.setenv("DISCOVER_BROKER_PASSWORD", USERS["cam0"])
    edge = EdgeSection(codec=FAST_CODEC, grounder={"type": "motion"},
                       cameras=[CameraConfig(id="cam0", source=str(CLIP), max_frames=3)])
    out = run_edge(edge, broker_config(url, username="cam0", tls={"ca_file": ca}), PREFIX)[0]
    assert out["published"] == 3 and sink.finish(20)["frames"] == 3


def test_the_acl_keeps_each_client_to_its_own_topics(site_broker):
    port, ca = site_broker
    publish_retained(port, ca, "cam0", f"{PREFIX}/cam0/status")  # allowed: the control case
    publish_retained(port, ca, "cam0", f"{PREFIX}/cam1/side")  # another camera's stream
    publish_retained(port, ca, "cam0", f"{PREFIX}/cam1/meta")
    publish_retained(port, ca, "sink", f"{PREFIX}/cam0/meta")  # a sink posing as an edge
    publish_retained(port, ca, "viewer", f"{PREFIX}/cam0/rest")
    assert retained(port, ca, "sink", f"{PREFIX}/#") == [f"{PREFIX}/cam0/status"]
    # and reading: a viewer gets no stream, an edge no other camera's control
    publish_retained(port, ca, "sink", f"{PREFIX}/cam1/control")
    assert retained(port, ca, "viewer", f"{PREFIX}/+/side") == []
    assert retained(port, ca, "cam0", f"{PREFIX}/cam1/control") == []
