"""Shared fixtures for the integration tests: a real Mosquitto broker on a free loopback port,
the bundled clip, a sink running in a thread, and a plain paho client that collects messages.

Every wait here is an event or a poll with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# before anything imports torch: spinning OpenMP waiters make torch on 2 busy cores tens of
# times slower (the product sets the same in discover/__init__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import paho.mqtt.client as mqtt  # noqa: E402
import pytest  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "sdk" / "assets" / "sample" / "street.mp4"
CLIP_FRAMES = 100
CLIP_SIZE = (768, 576)  # width, height
#: the spine's tests stream with the fast classical codec; the learned (default) codec has its
#: own tests and is exercised end to end by the demo and edge CLI tests
FAST_CODEC = {"type": "classical"}
PREFIX = "discover"


# -- broker ------------------------------------------------------------------------------------

def _require_mosquitto() -> str:
    from discover.broker import find_mosquitto

    exe = find_mosquitto()
    if exe is None:
        pytest.fail("mosquitto is not installed (looked on PATH and in /usr/sbin, /usr/local/sbin); "
                    "the integration tests need a real broker: apt-get install mosquitto",
                    pytrace=False)
    return exe


@pytest.fixture
def broker_factory() -> Iterator[Callable[[], Any]]:
    """Start any number of Mosquitto brokers (each on its own free loopback port); all are
    stopped at the end of the test."""
    from discover.broker import LocalBroker

    _require_mosquitto()
    started: list[LocalBroker] = []

    def make() -> LocalBroker:
        b = LocalBroker("mosquitto")
        started.append(b)
        b.start(timeout=10.0)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture(scope="module")
def module_broker() -> Iterator[Any]:
    """One Mosquitto shared by a module's tests (for fixtures that are costly to rebuild)."""
    from discover.broker import LocalBroker

    _require_mosquitto()
    b = LocalBroker("mosquitto").start(timeout=10.0)
    yield b
    b.stop()


@pytest.fixture
def broker(broker_factory: Callable[[], Any]) -> Any:
    """A running Mosquitto (``discover.broker.LocalBroker``), restartable on its port."""
    return broker_factory()


def broker_config(url: str, **kw: Any) -> Any:
    """BrokerConfig with fast reconnects, so a restarted broker is found again in well under
    a second."""
    from discover.sdk.transport.broker import BrokerConfig

    return BrokerConfig(url=url, **{"reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                                    "keepalive": 10, **kw})


@pytest.fixture
def clip() -> Path:
    assert CLIP.is_file(), f"bundled clip {CLIP} is missing"
    return CLIP


# -- waiting -----------------------------------------------------------------------------------

def wait_until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    """Poll ``pred`` until it returns something truthy or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}", pytrace=False)
        time.sleep(step)


@pytest.fixture
def lacking_reference(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The frame indices a sink found lacking a reference (each asked the edge for a refresh),
    in the order the sink met them. How many depends on how far the sink lags the edge when
    it joins, so a test asserts where they lie, not how many there are."""
    from discover.sink.pipeline import SinkPipeline

    frames: list[int] = []
    ask = SinkPipeline._request_refresh

    def record(self: SinkPipeline, cam: Any, index: int) -> None:
        frames.append(index)
        ask(self, cam, index)

    monkeypatch.setattr(SinkPipeline, "_request_refresh", record)
    return frames


def assert_recovered(lacking: list[int], got: list[int], summary: dict[str, Any]) -> None:
    """Only frames before the refresh lacked references, and from the first frame that decoded
    with its references on, every frame to the end of the clip did."""
    assert lacking and summary["missing_reference"] == len(lacking), (lacking, summary)
    lacked = set(lacking)
    clean = [i for i in got if i not in lacked]
    assert clean == list(range(clean[0], CLIP_FRAMES)), clean
    assert max(lacking) < clean[0], (lacking, clean[:5])


# -- a sink in a thread ------------------------------------------------------------------------

class SinkThread:
    """``sink.runner.run_sink`` in a thread; records every decoded (camera, frame index)."""

    def __init__(self, section: Any, broker: Any, prefix: str = PREFIX) -> None:
        self.section, self.broker, self.prefix = section, broker, prefix
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.frames: list[tuple[str, int]] = []
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="test-sink", daemon=True)

    def _on_frame(self, cam: str, index: int, image: Any) -> None:
        with self._cond:
            self.frames.append((cam, index))
            self._cond.notify_all()

    def _run(self) -> None:
        from discover.sink.runner import run_sink

        try:
            self.result = run_sink(self.section, self.broker, self.prefix, stop=self.stop,
                                   ready=self.ready, on_frame=self._on_frame)
        except BaseException as e:  # surfaced in the test thread
            self.error = e
        finally:
            self.ready.set()
            with self._cond:
                self._cond.notify_all()

    def start(self, timeout: float = 15.0) -> SinkThread:
        self.thread.start()
        assert self.ready.wait(timeout), "sink did not connect"
        if self.error is not None:
            raise self.error
        return self

    def indices(self, camera: str | None = None) -> list[int]:
        with self._cond:
            return [i for c, i in self.frames if camera is None or c == camera]

    def wait_frames(self, n: int, timeout: float, camera: str | None = None) -> list[int]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len([1 for c, _ in self.frames if camera is None or c == camera]) < n:
                left = deadline - time.monotonic()
                if left <= 0 or not self.thread.is_alive():
                    break
                self._cond.wait(min(left, 0.2))
        got = self.indices(camera)
        assert len(got) >= n, f"sink decoded {len(got)} of {n} frames in {timeout:g} s " \
                              f"(error: {self.error!r})"
        return got

    def finish(self, timeout: float = 30.0, stop: bool = False) -> dict[str, Any]:
        """Wait for the sink to return (``max_frames``/idle), or set ``stop`` first."""
        if stop:
            self.stop.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.stop.set()
            self.thread.join(10)
            pytest.fail(f"sink still running after {timeout:g} s "
                        f"({len(self.frames)} frames decoded)", pytrace=False)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


# -- a plain MQTT client -----------------------------------------------------------------------

class Collector:
    """A paho client subscribed to ``topics``; ``start`` returns once the broker acked every
    subscription, so messages published afterwards are all seen."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.port, self.topics = port, topics
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._acked: set[int] = set()
        self._mids: set[int] = set()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:  # noqa: ANN001
        for t in self.topics:
            _, mid = client.subscribe(t, qos=1)
            self._mids.add(mid)

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:  # noqa: ANN001
        self._acked.add(mid)
        if self._mids and self._mids <= self._acked:
            self.subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def start(self, timeout: float = 10.0) -> Collector:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            self.stop()
            pytest.fail(f"test MQTT client could not subscribe on port {self.port}")
        return self

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        with self._cond:
            return [(p, r) for t, p, r in self.messages if t == topic]

    def wait_for(self, pred: Callable[[list[tuple[str, bytes, bool]]], Any],
                 timeout: float, what: str) -> list[tuple[str, bytes, bool]]:
        """Wait until ``pred(messages)`` holds; returns the messages seen so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = list(self.messages)
                if pred(seen):
                    return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"timed out after {timeout:g} s waiting for {what}",
                                pytrace=False)
                self._cond.wait(min(left, 0.2))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collector() -> Iterator[Callable[[int, list[str]], Collector]]:
    made: list[Collector] = []

    def make(port: int, topics: list[str]) -> Collector:
        c = Collector(port, topics)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.stop()


def status_state(payload: bytes) -> str:
    return json.loads(payload)["state"]


# -- the command line --------------------------------------------------------------------------

def cli_env() -> dict[str, str]:
    """Environment for ``python -m discover`` subprocesses: the repo importable, no stray
    ``DISCOVER_*`` overrides from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOVER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTHONWARNINGS", None)
    return env


CLI = [sys.executable, "-m", "discover"]


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Everything under tests/integration is marked ``integration`` (select or skip with -m)."""
    root = Path(__file__).parent / "integration"
    for item in items:
        if root in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
