"""``discover record`` and ``discover replay``: capture a camera's topics with arrival times, and
play them back to a broker (original pace, ``speed`` times faster, or as fast as possible) or
straight into a sink pipeline with no broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from discover.sdk.errors import DiscoverError
from discover.sdk.recording import RecordingWriter, read_recording
from discover.sdk.security import OK, StreamKey, StreamVerifier
from discover.sdk.topics import DEFAULT_PREFIX, check_name, topic
from discover.sdk.transport.broker import BrokerConfig
from discover.sdk.transport.mqtt import MqttLink
from discover.sink.config import SinkSection
from discover.sink.pipeline import SinkPipeline


def record(broker: BrokerConfig, prefix: str, camera: str, out: Path, *,
           idle_timeout_s: float | None = None, duration_s: float | None = None,
           stop: threading.Event | None = None, ready: threading.Event | None = None,
           progress: Callable[[int, int], None] | None = None,
           key: StreamKey | None = None) -> dict[str, Any]:
    """Write every message under ``<prefix>/<camera>/#`` (results excepted) to ``out``; with
    ``key`` only what verifies (unsigned, foreign or forged messages are counted, not kept)."""
    if camera != "+":
        check_name(camera, "camera id")
    stop = stop or threading.Event()
    verifier = StreamVerifier(key, prefix) if key is not None else None
    writer = RecordingWriter(out)
    lock = threading.Lock()
    last = [time.monotonic()]

    def on_message(t: str, payload: bytes, retained: bool) -> None:
        if "/results/" in t:
            return
        if verifier is not None and verifier.check(t, payload) != OK:
            return
        with lock:
            writer.write(time.monotonic(), t, payload, retained)
            last[0] = time.monotonic()

    link = MqttLink(broker, subscriptions=[topic(prefix, camera, "#")], on_message=on_message)
    try:
        link.start(wait_s=30.0)
        if ready is not None:
            ready.set()
        t0 = time.monotonic()
        while not stop.is_set():
            time.sleep(0.05)
            now = time.monotonic()
            if duration_s is not None and now - t0 > duration_s:
                break
            if idle_timeout_s is not None and writer.records and now - last[0] > idle_timeout_s:
                break
            if progress is not None:
                progress(writer.records, writer.bytes)
    except KeyboardInterrupt:
        pass
    finally:
        link.stop()
        with lock:
            writer.close()
    out_summary = {"records": writer.records, "bytes": writer.bytes, "file": str(out)}
    if verifier is not None:
        out_summary["refused"] = sum(n for k, n in verifier.counters.items() if k != OK)
    return out_summary


def replay_to_broker(path: Path, broker: BrokerConfig, *, speed: float | None = 1.0,
                     progress: Callable[[int], None] | None = None,
                     key: StreamKey | None = None, prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """Publish a recording; ``speed`` None means as fast as possible. With ``key`` only what
    verifies is published (the rest counted as refused)."""
    records = list(read_recording(path))
    if not records:
        raise DiscoverError(f"recording {path} holds no messages")
    if key is not None:
        verifier = StreamVerifier(key, prefix)
        records = [r for r in records if verifier.check(r.topic, r.payload) == OK]
        refused = sum(n for k, n in verifier.counters.items() if k != OK)
    link = MqttLink(broker).start(wait_s=30.0)
    t0 = time.monotonic()
    sent = 0
    try:
        for r in records:
            if speed:
                delay = t0 + r.t / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            while not link.wait_unacked_below(256, 5.0):
                if not link.connected.wait(30.0):
                    raise DiscoverError(f"lost broker {broker.describe()} during replay")
            # meta and status are retained on a live stream; a recorder subscribed before the
            # edge started got them live (retain flag cleared), so restore it
            parts = r.topic.split("/")
            retain = r.retain or (parts[-1] in ("meta", "status") and len(parts) > 2
                                  and parts[-2] not in ("task", "results"))
            link.publish(r.topic, r.payload, retain=retain)
            sent += 1
            if progress is not None:
                progress(sent)
        link.wait_unacked_below(0, 30.0)
    finally:
        link.stop()
    out = {"messages": sent, "seconds": round(time.monotonic() - t0, 3)}
    if key is not None:
        out["refused"] = refused
    return out


def replay_to_sink(path: Path, section: SinkSection, prefix: str, *, speed: float | None = None,
                   on_frame: Callable[[str, int, np.ndarray], None] | None = None,
                   progress: Callable[[int], None] | None = None,
                   key: StreamKey | None = None) -> dict[str, Any]:
    """Feed a recording into a sink pipeline in-process (no broker); with ``key`` the sink
    takes only streams signed with it."""
    pipe = SinkPipeline(section, prefix, on_frame=on_frame, key=key)
    t0 = time.monotonic()
    any_record = False
    try:
        for r in read_recording(path):
            any_record = True
            if speed:
                delay = t0 + r.t / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            pipe.feed(r.topic, r.payload)
            pipe.process_ready()
            if progress is not None:
                progress(pipe.frames_out)
            if section.max_frames is not None and pipe.frames_out >= section.max_frames:
                break
        pipe.process_ready(flush=True)
    finally:
        pipe.close()
    if not any_record:
        raise DiscoverError(f"recording {path} holds no messages")
    if pipe.refused and not pipe.frames_out:
        raise DiscoverError(next(iter(pipe.refused.values())))
    return pipe.summary()
