"""The edge agent: per camera, source -> grounder -> codec -> packets -> MQTT.

::

    source --frame--> grounder(labels of the camera's tasks) --boxes--> pad, snap, assign tasks
        --regions--> codec.compress --> frame_messages --> FramePublisher (bounded) --> broker

Each camera runs in its own thread with its own MQTT connection (its own last will).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
from discover.edge.config import CameraConfig, EdgeSection
from discover.edge.sources import open_source, paced
from discover.sdk.codecs import CODECS, Compressed
from discover.sdk.errors import DiscoverError
from discover.sdk.framing import frame_messages
from discover.sdk.grounders import ANY_OBJECT, GROUNDERS
from discover.sdk.limits import loads_bounded
from discover.sdk.packet import overhead
from discover.sdk.profiles import load_profile
from discover.sdk.regions import Region, area_share, select_regions
from discover.sdk.rest import RestScheduler
from discover.sdk.security import StreamKey
from discover.sdk.stream import FULL_TABLE_EVERY, SideContext, StreamMeta
from discover.sdk.topics import topic
from discover.sdk.tracking import TrackingGrounder
from discover.sdk.transport.broker import BrokerConfig
from discover.sdk.transport.mqtt import FramePublisher, MqttLink, Will

log = logging.getLogger(__name__)


@dataclass
class EdgeStats:
    camera: str
    frames: int = 0
    width: int = 0
    height: int = 0
    fps_nominal: float = 0.0
    bytes: Counter[str] = field(default_factory=Counter)
    packets: int = 0
    header_bytes: int = 0
    regions: int = 0
    area_share_sum: float = 0.0
    grounded_frames: int = 0
    ground_s: float = 0.0
    encode_s: float = 0.0
    packetize_s: float = 0.0
    wall_s: float = 0.0
    publisher: Counter[str] = field(default_factory=Counter)
    link: Counter[str] = field(default_factory=Counter)
    intra_frames: int = 0
    region_modes: Counter[str] = field(default_factory=Counter)  # intra / residual / skip
    control: Counter[str] = field(default_factory=Counter)  # refresh_requests / ignored
    rest: Counter[str] = field(default_factory=Counter)  # rests sent, by trigger

    def summary(self) -> dict[str, Any]:
        n = max(self.frames, 1)
        total = sum(self.bytes.values())
        px = n * self.width * self.height
        dur = self.frames / self.fps_nominal if self.fps_nominal else 0.0
        return {
            "camera": self.camera,
            "frames": self.frames,
            "published": self.publisher["frames_published"],
            "dropped": self.publisher["frames_dropped"] + self.publisher["frames_partial"],
            "bytes": total,
            "bytes_by_substream": dict(self.bytes),
            "packets": self.packets,
            "packet_overhead": round(self.header_bytes / max(1, total - self.header_bytes), 5),
            "bpp": round(total * 8 / px, 5) if px else 0.0,
            "kbps": round(total * 8 / 1000 / dur, 2) if dur else 0.0,
            "task_area_share": round(self.area_share_sum / n, 4),
            "regions_per_frame": round(self.regions / n, 2),
            "grounded_frames": self.grounded_frames,
            "ground_ms": round(1000 * self.ground_s / n, 2),
            "encode_ms": round(1000 * self.encode_s / n, 2),
            "packetize_ms": round(1000 * self.packetize_s / n, 3),
            "fps": round(self.frames / self.wall_s, 2) if self.wall_s else 0.0,
            "reconnects": max(0, self.link["connects"] - 1),
            "intra_frames": self.intra_frames,
            "region_modes": dict(self.region_modes),
            "refresh_requests": self.control["refresh_requests"],
            "control_ignored": self.control["ignored"],
            "control_refused": sum(v for k, v in self.control.items() if k.startswith("refused_")),
            "refresh_rate_limited": self.control["rate_limited"],
            "rest_frames": dict(self.rest),
        }


@dataclass
class FrameStep:
    """One frame through the edge (:meth:`CameraAgent.step`): its regions, what the codec
    made of it, the MQTT messages, and the stage times in seconds."""

    index: int
    regions: list[Region]
    coded: Compressed
    messages: list[tuple[str, bytes]]
    ground_s: float
    encode_s: float
    packetize_s: float


class CameraAgent:
    """Runs one camera until its source ends, ``max_frames``, or ``stop`` is set."""

    def __init__(self, cam: CameraConfig, edge: EdgeSection, broker: BrokerConfig, prefix: str,
                 *, timings: TextIO | None = None, key: StreamKey | None = None) -> None:
        self.cam, self.edge, self.broker, self.prefix = cam, edge, broker, prefix
        self.key = key  # signs meta and packets, checks control requests (sdk/security.py)
        self._last_refresh = -float("inf")  # monotonic time of the last honoured refresh
        self.profiles = {t: load_profile(t) for t in cam.tasks}
        self.task_labels = {t: set(p.labels) for t, p in self.profiles.items()}
        # profile order (the first task's first): grounders that map several labels onto one
        # class name the box after the earliest of them
        self.labels = list(dict.fromkeys(lb for t in cam.tasks for lb in self.profiles[t].labels))
        self._label_set = set(self.labels)
        self.source = open_source(cam.source, fps=cam.fps)
        self.grounder = GROUNDERS.create(edge.grounder_for(cam))
        # grounds every edge.tracking.every frames (default: every frame), tracks in between
        self.tracker = TrackingGrounder(self.grounder, edge.tracking_for(cam))
        self.codec = CODECS.create(edge.codec_for(cam))
        self.codec.start(cam.tasks, self.source.fps)
        rest_interval = 0 if self.codec.rest_redundant else cam.rest_interval
        if rest_interval != cam.rest_interval:
            log.info("camera %s: the task stream is the whole view at the human view's quality, "
                     "so no rest is sent (set edge.codec.rest_crf for a better human view)",
                     cam.id)
        self.rest = RestScheduler(rest_interval, cam.rest_on_change, cam.rest_min_gap)
        # the last region table sent: the next is coded against it when frames depend anyway
        self.side = SideContext(FULL_TABLE_EVERY if self.codec.predictive else 1)
        self.meta = StreamMeta(
            camera=cam.id, width=self.source.width, height=self.source.height,
            fps=self.source.fps, tasks=list(cam.tasks), labels=[ANY_OBJECT, *self.labels],
            codec=self.codec.descriptor(), grounder=self.tracker.describe(),
            rest_interval=rest_interval)
        self.stats = EdgeStats(cam.id, width=self.source.width, height=self.source.height,
                               fps_nominal=self.source.fps)
        self.timings = timings
        self.metrics: Any = None  # edge.telemetry.EdgeMetrics when edge.metrics is on
        self.publisher: FramePublisher | None = None  # while running (metrics: queue depth)
        self._timing_lock = threading.Lock()
        self._pending_times: dict[int, dict[str, float]] = {}

    # -- regions ------------------------------------------------------------------------------

    def regions(self, dets: list, width: int, height: int) -> list[Region]:
        """The regions to code: the boxes some task wants, padded, snapped, de-duplicated and
        merged where that codes fewer cells (``sdk.regions.select_regions``)."""
        g = self.edge.grounder_for(self.cam)
        return select_regions(dets, self.task_labels, width, height, align=self.codec.align,
                              margin=g.margin, min_score=g.min_score,
                              dedupe_iou=self.edge.dedupe_iou, max_regions=self.edge.max_regions,
                              known_labels=self._label_set, merge=self.edge.merge_regions)

    # -- MQTT ---------------------------------------------------------------------------------

    def _status(self, state: str) -> bytes:
        return json.dumps({"state": state, "camera": self.cam.id, "session": self.meta.session,
                           "time": time.time()}).encode()

    def _on_connect(self, link: MqttLink) -> None:
        link.publish(topic(self.prefix, self.cam.id, "meta"), self.meta.to_json(self.key),
                     retain=True)
        link.publish(topic(self.prefix, self.cam.id, "status"), self._status("online"), retain=True)

    def _on_control(self, name: str, payload: bytes, retained: bool) -> None:
        """A sink's request on ``<prefix>/<camera>/control``; anything malformed is counted and
        dropped (a sink never stops an edge)."""
        try:
            req = loads_bounded(payload, "control request")
            ok = isinstance(req, dict) and req.get("request") == "refresh" and not retained
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            self.stats.control["ignored"] += 1
            return
        if self.key is not None:
            verdict = self.key.check_control(req, self.meta.session)
            if verdict != "ok":
                self.stats.control[f"refused_{verdict}"] += 1
                return
        now = time.monotonic()
        if now - self._last_refresh < self.edge.refresh_min_interval_s:
            self.stats.control["rate_limited"] += 1
            return
        self._last_refresh = now
        self.stats.control["refresh_requests"] += 1
        self.codec.request_refresh()
        self.side.request_full()
        self.rest.request()

    def _published(self, index: int, t: float) -> None:
        if self.metrics is not None:
            self.metrics.published(self.cam.id, index, t)
        if self.timings is None:
            return
        with self._timing_lock:
            rec = self._pending_times.pop(index, None)
            if rec is not None:
                rec["t_published"] = t
                self.timings.write(json.dumps(rec) + "\n")

    def _unreachable(self) -> DiscoverError:
        return DiscoverError(f"broker {self.broker.describe()} unreachable for "
                             f"{self.edge.connect_timeout_s:g} s; check --broker and that the "
                             "broker is running")

    # -- one frame ----------------------------------------------------------------------------

    def step(self, image: np.ndarray, index: int, capture_us: int, *,
             send_rest: bool | None = None, detections: list | None = None) -> FrameStep:
        """Ground, select regions, code and packetize one frame, and count it in ``stats``:
        what ``run`` does per frame, callable without a broker (benchmarks). ``send_rest``
        overrides the rest scheduler; ``detections`` are this frame's boxes grounded already
        (a benchmark coding the same frames at several rates grounds them once)."""
        t0 = time.perf_counter()
        regions = self.select(image, index, detections)
        return self.code(image, index, capture_us, regions, time.perf_counter() - t0,
                         send_rest=send_rest)

    def select(self, image: np.ndarray, index: int,
               detections: list | None = None) -> list[Region]:
        """The first half of :meth:`step`: ground (or take ``detections``) and select the
        regions. ``run`` does it on its own thread while the previous frame is coded."""
        h, w = image.shape[:2]
        if (w, h) != (self.meta.width, self.meta.height):
            raise DiscoverError(
                f"camera {self.cam.id}: the source changed resolution mid-stream, from "
                f"{self.meta.width}x{self.meta.height} to {w}x{h} at frame {index}; restart the "
                "edge (its stream then starts anew at the new size) or fix the source's size")
        dets = self.tracker.ground(image, self.labels) if detections is None else detections
        return self.regions(dets, w, h)

    def code(self, image: np.ndarray, index: int, capture_us: int, regions: list[Region],
             ground_s: float, *, send_rest: bool | None = None,
             grounded: bool | None = None) -> FrameStep:
        """The second half of :meth:`step`: rest schedule, codec, packets, stats
        (``grounded``: whether the grounder ran on this frame rather than the tracker)."""
        s = self.stats
        h, w = image.shape[:2]
        t1 = time.perf_counter()
        if send_rest is None:
            send_rest = self.rest.due(index, image, regions)
        coded = self.codec.compress(image, regions, send_rest)
        t2 = time.perf_counter()
        msgs = frame_messages(self.prefix, self.meta, index, capture_us, regions, coded,
                              max_packet=self.edge.max_packet,
                              signer=self.key.signer(self.meta.session) if self.key else None,
                              side_context=self.side)
        t3 = time.perf_counter()
        s.intra_frames += int(coded.stats.intra)
        s.region_modes.update(coded.stats.modes)
        for tp, payload in msgs:
            task = tp.rsplit("/task/", 1)[1] if "/task/" in tp else ""
            s.bytes["task" if task else tp.rsplit("/", 1)[-1]] += len(payload)
            s.header_bytes += overhead(payload)
        s.packets += len(msgs)
        s.frames += 1
        s.regions += len(regions)
        s.grounded_frames = self.tracker.grounded
        s.area_share_sum += area_share(regions, w, h)
        s.ground_s += ground_s
        s.encode_s += t2 - t1
        s.packetize_s += t3 - t2
        if self.timings is not None:
            with self._timing_lock:
                self._pending_times[index] = {
                    "camera": self.cam.id, "frame": index, "capture_us": capture_us,
                    "grounded": self.tracker.last_grounded if grounded is None else grounded,
                    "ground_ms": 1000 * ground_s, "encode_ms": 1000 * (t2 - t1),
                    "packetize_ms": 1000 * (t3 - t2), "t_submitted": time.time()}
        return FrameStep(index, regions, coded, msgs, ground_s, t2 - t1, t3 - t2)

    def close(self) -> None:
        """The camera stopped: release its source and end the codec's streams (a stream codec
        left open, SVT-AV1's, logs an error line); safe to call twice."""
        self.source.close()
        self.codec.close()

    # -- run ----------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None,
            on_frame: Callable[[int], None] | None = None) -> dict[str, Any]:
        stop = stop or threading.Event()
        link = MqttLink(self.broker, client_id=f"discover-edge-{self.cam.id}",
                        will=Will(topic(self.prefix, self.cam.id, "status"),
                                  self._status("offline")),
                        subscriptions=[topic(self.prefix, self.cam.id, "control")],
                        on_message=self._on_control, on_connect=[self._on_connect])
        link.start()
        pub = FramePublisher(link, queue_frames=self.edge.queue_for(self.source.fps),
                             max_unacked=self.edge.max_unacked)
        pub.on_published = self._published
        pub.on_dropped = lambda index: self.side.request_full()  # later tables cannot refer to it
        s = self.stats
        s.publisher, s.link, self.publisher = pub.counters, link.counters, pub  # live, for metrics
        t_start = time.monotonic()
        warned = False
        coding = _CodingThread(self, pub, on_frame, self.edge.code_queue)
        try:
            # give the first connection a moment, so a healthy broker is not reported unreachable
            link.wait_connected(min(1.0, self.edge.connect_timeout_s))
            for fr in paced(self.source, realtime=self.cam.realtime, max_frames=self.cam.max_frames):
                if stop.is_set():
                    break
                if link.refused.is_set():
                    raise link.refusal_error()
                if not link.connected.is_set():
                    waited = time.monotonic() - t_start
                    if link.counters["connects"] == 0 and waited > self.edge.connect_timeout_s:
                        raise self._unreachable()
                    if not warned:
                        log.warning("camera %s: broker %s not reachable yet; keeping the newest "
                                    "%d frames", self.cam.id, self.broker.describe(),
                                    self.edge.queue_for(self.source.fps))
                        warned = True
                t0 = time.perf_counter()
                regions = self.select(fr.image, fr.index)
                coding.submit(fr, regions, time.perf_counter() - t0, self.tracker.last_grounded)
            coding.finish()
            s.wall_s = time.monotonic() - t_start
            if link.counters["connects"] == 0 and not stop.is_set():
                # a short source can end before the first connection: wait for it (up to the
                # connect timeout) so the queued frames go out, and fail if it never comes
                left = self.edge.connect_timeout_s - (time.monotonic() - t_start)
                if not link.wait_connected(max(0.0, left)):
                    raise self._unreachable()
        finally:
            coding.close()
            pub.close(timeout=30.0 if link.connected.is_set() else 0.5)
            if link.connected.is_set():
                info = link.client.publish(topic(self.prefix, self.cam.id, "status"),
                                           self._status("offline"), qos=1, retain=True)
                info.wait_for_publish(5.0)
            link.stop()
            self.close()
            s.publisher, s.link, s.rest = pub.counters, link.counters, self.rest.reasons
        return s.summary()


class _CodingThread:
    """Codes and publishes frames on its own thread while ``run`` grounds the next ones: the
    grounder (ONNX Runtime, OpenCV) and the encoder (x265, or torch) run outside the GIL, so a
    2-core gateway keeps both cores busy and the edge runs at the pace of its slower stage
    instead of their sum. Up to ``depth`` frames wait or are being coded: the grounder's cost
    comes in bursts (a detector pass every few frames, the tracker in between), and a short
    queue lets the coder work through a burst instead of idling behind it. Frames keep their
    order, and an error in coding is raised in ``run``'s thread on a later frame."""

    def __init__(self, agent: CameraAgent, pub: FramePublisher,
                 on_frame: Callable[[int], None] | None, depth: int = 1) -> None:
        self.agent, self.pub, self.on_frame = agent, pub, on_frame
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"edge-{agent.cam.id}-code")
        self.pending: deque[Future[None]] = deque()
        self.depth = max(1, depth)

    def submit(self, fr: Any, regions: list[Region], ground_s: float, grounded: bool) -> None:
        while self.pending and (len(self.pending) >= self.depth or self.pending[0].done()):
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._code, fr, regions, ground_s, grounded))

    def _code(self, fr: Any, regions: list[Region], ground_s: float, grounded: bool) -> None:
        a = self.agent
        msgs = a.code(fr.image, fr.index, fr.capture_us, regions, ground_s,
                      grounded=grounded).messages
        if a.metrics is not None:
            a.metrics.submitted(a.cam.id, fr.index, fr.capture_us)
        self.pub.submit(fr.index, msgs)
        if self.on_frame is not None:
            self.on_frame(fr.index)

    def finish(self) -> None:
        """Wait for every frame queued or being coded (raising what coding raised)."""
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def run_edge(edge: EdgeSection, broker: BrokerConfig, prefix: str, *,
             stop: threading.Event | None = None, timings: TextIO | None = None,
             on_frame: Callable[[str, int], None] | None = None,
             key: StreamKey | None = None) -> list[dict[str, Any]]:
    """Run every camera of the section (one thread each) and return their summaries."""
    if not edge.cameras:
        raise DiscoverError("no camera configured; pass --source and --camera or list cameras "
                            "under edge.cameras in the config")
    agents = [CameraAgent(c, edge, broker, prefix, timings=timings, key=key)
              for c in edge.cameras]
    stop = stop or threading.Event()
    if edge.metrics is not None:
        from discover.edge.telemetry import EdgeMetrics

        server = EdgeMetrics(agents).serve(edge.metrics)
        log.info("edge metrics on %s", server.url)
        try:
            return _run_agents(agents, stop, on_frame)
        finally:
            server.close()
    return _run_agents(agents, stop, on_frame)


def _run_agents(agents: list[CameraAgent], stop: threading.Event,
                on_frame: Callable[[str, int], None] | None) -> list[dict[str, Any]]:
    if len(agents) == 1:
        cb = (lambda i: on_frame(agents[0].cam.id, i)) if on_frame else None
        return [agents[0].run(stop, cb)]
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def work(a: CameraAgent) -> None:
        try:
            cb = (lambda i: on_frame(a.cam.id, i)) if on_frame else None
            results[a.cam.id] = a.run(stop, cb)
        except BaseException as e:  # surfaced after the other cameras stop
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=work, args=(a,), name=f"edge-{a.cam.id}") for a in agents]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return [results[a.cam.id] for a in agents if a.cam.id in results]
