"""Run a sink worker on an MQTT broker until ``max_frames``, ``idle_timeout_s`` or stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
from discover.sdk.errors import DiscoverError
from discover.sdk.security import StreamKey
from discover.sdk.topics import parse_topic, sink_topics, topic
from discover.sdk.transport.broker import BrokerConfig
from discover.sdk.transport.mqtt import MqttLink
from discover.sink.config import SinkSection
from discover.sink.pipeline import SinkPipeline

if TYPE_CHECKING:
    from discover.sink.http.server import LiveServer

log = logging.getLogger(__name__)


def run_sink(section: SinkSection, broker: BrokerConfig, prefix: str, *,
             stop: threading.Event | None = None, ready: threading.Event | None = None,
             timings: TextIO | None = None,
             on_frame: Callable[[str, int, np.ndarray], None] | None = None,
             live: LiveServer | None = None,
             key: StreamKey | None = None) -> dict[str, Any]:
    """Subscribe, process frames as they complete, return the summary. With ``key`` only
    streams signed with it are taken (sdk/security.py).

    The web view (``sink.http``) is served while the worker runs; pass ``live`` (started) to
    keep serving after it returns (the caller stops it), e.g. for ``discover demo --serve``.

    With ``camera: +`` and a shard I/N with N > 1 the worker first subscribes to every camera's
    ``meta`` only and takes a camera's substreams once its descriptor arrives and the camera
    falls in this worker's shard, so N workers with shards 0/N..N-1/N split the cameras and each
    receives only its own. With N = 1 it subscribes to every camera's substreams at once.
    """
    stop = stop or threading.Event()
    link_box: list[MqttLink] = []
    subscribed: set[str] = set()
    sub_lock = threading.Lock()

    def publish(t: str, payload: bytes) -> None:
        link_box[0].publish(t, payload, qos=0)

    pipe = SinkPipeline(section, prefix, publish=publish, timings=timings, on_frame=on_frame,
                        key=key)

    def take_camera(link: MqttLink, camera: str) -> None:
        with sub_lock:
            if camera in subscribed:
                return
            subscribed.add(camera)
            topics = sink_topics(prefix, camera, section.tasks, section.wants_rest)
            topics = [t for t in topics if not t.endswith("/meta")]
            link.subscriptions.extend(topics)
        for t in topics:
            link.client.subscribe(t, qos=broker.qos)

    # a sharded "+" worker takes a camera once its meta arrives (packets of it sent before the
    # subscription lands are lost); one worker for every camera subscribes with wildcards at once
    per_camera = section.camera == "+" and int(section.shard.split("/")[1]) > 1

    def on_message(t: str, payload: bytes, retained: bool) -> None:
        parts = parse_topic(prefix, t)
        if per_camera and parts is not None and parts.channel == "meta" \
                and pipe.wants_camera(parts.camera) and payload:
            take_camera(link_box[0], parts.camera)
        pipe.feed(t, payload)

    if per_camera:
        subs = [topic(prefix, "+", "meta")]
    else:
        subs = sink_topics(prefix, section.camera, section.tasks, section.wants_rest)
    # a stable id: with broker.persistent the broker keeps this worker's QoS 1 messages while
    # it is away (restart, broker restart) and hands them over when it comes back
    link = MqttLink(broker, client_id=section.session_id(prefix), subscriptions=subs,
                    on_message=on_message)
    link_box.append(link)
    own_live = None
    if live is None and section.http.listen is not None:
        from discover.sink.http.server import LiveServer

        live = own_live = LiveServer.from_config(section.http).start()
        log.info("sink web view on %s", live.url)
    if live is not None:
        live.attach(pipe, lambda: link.counters)
    try:
        link.start(wait_s=section.connect_timeout_s)
    except BaseException:
        if own_live is not None:
            own_live.stop()
        raise
    log.info("sink ready: subscribed to %s on %s", ", ".join(subs), broker.describe())
    if ready is not None:
        ready.set()
    try:
        while not stop.is_set():
            pipe.arrived.clear()  # before popping, so a packet landing meanwhile is not missed
            n = pipe.process_ready()
            if section.max_frames is not None and pipe.frames_out >= section.max_frames:
                break
            idle = time.monotonic() - pipe.last_input
            if section.idle_timeout_s is not None and idle > section.idle_timeout_s \
                    and pipe.reasm.pending_frames == 0:
                break
            if n == 0:
                # wake on the next packet, or in time to expire a frame that never completes
                pipe.arrived.wait(0.05)
        # leave the broker first: what it has not handed over yet stays queued in our
        # persistent session for the next run instead of being acked and then discarded
        link.stop()
        pipe.process_ready(flush=True)
    except KeyboardInterrupt:
        link.stop()
        pipe.process_ready(flush=True)
    finally:
        pipe.close()
        link.stop()
        if live is not None:
            live.hub.end_streams()
        if own_live is not None:
            own_live.stop()
    summary = pipe.summary()
    if pipe.refused and not pipe.frames_out:
        raise DiscoverError(next(iter(pipe.refused.values())))
    return summary
