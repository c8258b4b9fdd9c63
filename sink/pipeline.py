"""The sink pipeline, independent of where packets come from (MQTT or a recording).

::

    feed(topic, payload) --meta--> stream descriptor per camera (checked: codec, checkpoint)
                         --side/task/rest--> Reassembler
    process_ready() --frames in order--> codec.decompress --> composer --> task models
                                    --> frame writer, results JSON files, results topic
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np
from discover.sdk.codecs import CODECS, Codec
from discover.sdk.errors import DiscoverError, PacketError
from discover.sdk.framing import codec_input
from discover.sdk.reassembly import AssembledFrame, Reassembler
from discover.sdk.security import StreamKey
from discover.sdk.stream import SideContext, StreamMeta
from discover.sdk.topics import is_name, parse_topic, topic
from discover.sink.composers import COMPOSERS, Composer
from discover.sink.config import SinkSection
from discover.sink.report import FrameReport
from discover.sink.tasks import TASK_MODELS, TaskModel
from discover.sink.writers import FrameWriter, make_writer

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]
#: codec settings a stream may not choose for the sink (its threads, device, the edge's
#: runtime and files); a checkpoint folder named by the stream is only used when this machine
#: has it and its content hash is the stream's (checked in _camera)
LOCAL_CODEC_KEYS = frozenset({"threads", "device", "onnx", "edge_runtime"})
#: frames whose latency the summary's percentiles cover (about 3 hours of a 10 fps camera)
LATENCY_WINDOW = 100_000


class _Camera:
    """Per-camera decode state, built from its stream descriptor."""

    def __init__(self, meta: StreamMeta, codec: Codec, composer: Composer,
                 writer: FrameWriter) -> None:
        self.meta, self.codec, self.composer, self.writer = meta, codec, composer, writer
        self.frames = 0
        self.bytes = 0
        self.last_index: int | None = None
        self.last_refresh_request = -float("inf")  # monotonic time
        self.side = SideContext()  # the last region table decoded: the next one may continue it


class SinkPipeline:
    """Reassemble, decode, compose, run tasks and write results for any number of cameras."""

    def __init__(self, section: SinkSection, prefix: str, *, publish: Publish | None = None,
                 key: StreamKey | None = None,
                 timings: TextIO | None = None,
                 on_frame: Callable[[str, int, np.ndarray], None] | None = None) -> None:
        self.section, self.prefix = section, prefix
        self.key = key  # with a key: only signed metas and packets (sdk/security.py)
        self._warned: set[tuple[str, str]] = set()
        self.last_seen: dict[str, float] = {}  # camera -> monotonic time of its last message
        self._last_eviction = time.monotonic()
        self._gone: Counter[str] = Counter()  # totals of cameras released (for the summary)
        self._gone_seconds = 0.0
        self.publish = publish if section.publish_results else None
        self._control = publish  # refresh requests go out even when results are not published
        self.timings = timings
        self.on_frame = on_frame
        self.metas: dict[str, StreamMeta] = {}
        self.cameras: dict[str, _Camera] = {}
        self.refused: dict[str, str] = {}
        self.models: dict[str, TaskModel] = {
            t: TASK_MODELS.create(section.task_models.get(t, "regions")) for t in section.tasks}
        self.reasm = Reassembler(
            self.metas.get, tasks=section.tasks, rest=section.wants_rest,
            timeout_s=section.frame_timeout_s, max_frames=section.max_pending_frames,
            max_bytes=int(section.max_pending_mb * 1024 * 1024), key=key,
            on_reject=lambda cam, why: self._warn_once(
                cam, why, f"refusing packets ({why}): the stream is not signed with this sink's "
                "key (security.key_file)"))
        self.counters: Counter[str] = Counter()
        # (camera, substream) -> wire bytes of the packets kept (Prometheus, sink/telemetry.py)
        self.substream_bytes: Counter[tuple[str, str]] = Counter()
        # called with a FrameReport after each delivered frame (web view, metrics); keep quick
        self.listeners: list[Callable[[FrameReport], None]] = []
        # capture -> decoded of the latest frames (a window: a sink runs for months)
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.frames_out = 0
        self.first_out: float | None = None
        self.last_out: float | None = None
        self.last_input = time.monotonic()
        self.arrived = threading.Event()  # set on every message; the worker loop waits on it
        self._lock = threading.Lock()

    # -- intake (any thread) ------------------------------------------------------------------

    def wants_camera(self, camera: str) -> bool:
        s = self.section
        return (s.camera == "+" or s.camera == camera) and s.in_shard(camera)

    def feed(self, topic_name: str, payload: bytes) -> None:
        """Take one message from the broker or a recording."""
        self.last_input = time.monotonic()
        parts = parse_topic(self.prefix, topic_name)
        if parts is None or not self.wants_camera(parts.camera):
            self.counters["ignored_messages"] += 1
            return
        if not is_name(parts.camera):  # "..", "." (a '+' sink writes under out/<camera>)
            self.counters["bad_camera_id"] += 1
            return
        if not self._admit(parts.camera):
            return
        ch = parts.channel
        if ch == "meta":
            self._on_meta(parts.camera, payload)
        elif ch in ("side", "rest") or ch.startswith("task/"):
            if self.reasm.push(payload, parts.camera, ch):
                self.substream_bytes[(parts.camera, ch)] += len(payload)
            self.arrived.set()
        else:
            self.counters["ignored_messages"] += 1

    def _on_meta(self, camera: str, payload: bytes) -> None:
        if not payload:  # retained meta cleared
            return
        try:
            meta = StreamMeta.from_json(payload, self.key)
            if meta.width * meta.height > self.section.max_frame_pixels:
                raise PacketError("bad_meta", f"frame {meta.width}x{meta.height} is over "
                                  f"sink.max_frame_pixels {self.section.max_frame_pixels}")
        except PacketError as e:
            self.counters["bad_meta" if e.reason == "bad_meta" else f"meta_{e.reason}"] += 1
            self._warn_once(camera, "meta", f"ignoring stream descriptor ({e})")
            return
        if meta.camera != camera:
            self.counters["bad_meta"] += 1
            return
        with self._lock:
            old = self.metas.get(camera)
            if old is not None and old.session == meta.session:
                return
            if old is not None:
                self.reasm.reset_camera(camera)
                self.counters["stream_restarts"] += 1
            self.metas[camera] = meta

    # -- processing (one thread) --------------------------------------------------------------

    def camera(self, name: str) -> _Camera | None:
        """The decoding state of a camera whose meta arrived (its codec and composer), made now
        if needed; None if this sink refuses the stream (``refused`` says why). Benchmarks use
        it to reach the composer they time."""
        return self._camera(name) if name in self.metas else None

    def _camera(self, name: str) -> _Camera | None:
        meta = self.metas[name]
        cam = self.cameras.get(name)
        if cam is not None and cam.meta is meta:
            return cam
        if cam is not None:
            cam.writer.close()
        try:
            codec = CODECS.create(self._codec_config(meta))
            want = meta.codec.get("checkpoint")
            have = codec.checkpoint_hash()
            if want != have:
                raise DiscoverError(
                    f"camera {name} streams with codec checkpoint {want}, this sink has {have}; "
                    "install the same checkpoint on the sink (see 'discover train' / README)")
        except DiscoverError as e:
            if self.refused.get(name) != str(e):
                log.error("%s", e)
            self.refused[name] = str(e)
            return None
        self.refused.pop(name, None)
        cam = _Camera(meta, codec, COMPOSERS.create(self.section.composer),
                      make_writer(self.section.output, self.section.out, name, meta.fps))
        self.cameras[name] = cam
        return cam

    def _codec_config(self, meta: StreamMeta) -> dict[str, Any] | str:
        """The stream's codec settings minus what only this machine decides (threads, device,
        the edge's runtime): those come from the sink's own config."""
        cfg = meta.codec.get("config")
        if not isinstance(cfg, dict):
            return str(meta.codec.get("type", "?"))
        cfg = {k: v for k, v in cfg.items() if k not in LOCAL_CODEC_KEYS}
        fields = CODECS.get(str(cfg.get("type"))).Config.model_fields
        if "device" in fields:
            cfg["device"] = self.section.codec_device
        if "threads" in fields:
            cfg["threads"] = self.section.codec_threads
        return cfg

    def _warn_once(self, camera: str, kind: str, message: str) -> None:
        """One warning per camera and kind of trouble (a forged flood logs one line)."""
        key = (camera, kind)
        if key not in self._warned and len(self._warned) < 10_000:
            self._warned.add(key)
            log.warning("camera %s: %s", camera, message)

    # -- bounded per-camera state --------------------------------------------------------------

    def _admit(self, camera: str) -> bool:
        """Note the camera's message; a camera beyond ``sink.max_cameras`` is refused (counted)
        until idle ones are forgotten (``evict_idle``), so forged ids cannot grow the sink."""
        with self._lock:
            if camera not in self.last_seen and len(self.last_seen) >= self.section.max_cameras:
                self.counters["messages_over_camera_cap"] += 1
                self._warn_once("*", "camera_cap", f"more than {self.section.max_cameras} "
                                "cameras: refusing new ones until some go idle; raise "
                                "sink.max_cameras or shard the cameras over workers")
                return False
            self.last_seen[camera] = time.monotonic()
            return True

    def evict_idle(self, now: float | None = None) -> int:
        """Release the decoder, composer, writer and pending frames of cameras silent for
        ``sink.camera_idle_s`` (a camera that comes back rebuilds them from its meta); when the
        camera cap is reached, forget those cameras entirely. Returns how many were released."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [c for c, t in self.last_seen.items() if now - t > self.section.camera_idle_s]
            forget = len(self.last_seen) >= self.section.max_cameras
            for c in idle:
                if forget:
                    del self.last_seen[c]
                    self.metas.pop(c, None)
                    self.refused.pop(c, None)
        released = 0
        for c in idle:
            cam = self.cameras.pop(c, None)
            if cam is not None or forget:
                released += 1
                self._release(c, cam)
        self.counters["cameras_evicted"] += released
        return released

    def _release(self, camera: str, cam: _Camera | None) -> None:
        if cam is not None:
            cam.writer.close()
            self._gone.update(frames=cam.frames, bytes=cam.bytes,
                              pixels=cam.frames * cam.meta.width * cam.meta.height)
            self._gone_seconds += cam.frames / cam.meta.fps
        self.reasm.reset_camera(camera)
        for k in [k for k in self.substream_bytes if k[0] == camera]:
            del self.substream_bytes[k]

    def process_ready(self, flush: bool = False) -> int:
        """Decode and deliver every frame that is ready; returns how many. Each frame is
        decoded inside one boundary: a frame whose decode fails is dropped and counted under
        ``frames_failed`` and its reason, and the sink goes on with the next."""
        now = time.monotonic()
        if now - self._last_eviction > 1.0:
            self._last_eviction = now
            self.evict_idle(now)
        n = 0
        for frame in self.reasm.pop_ready(flush=flush):
            if self.section.max_frames is not None and self.frames_out >= self.section.max_frames:
                self.counters["frames_after_max"] += 1
                continue
            try:
                cam = self._camera(frame.camera)
                if cam is None:
                    self.counters["frames_refused"] += 1
                    continue
                self._process(cam, frame)
            except Exception as e:  # noqa: BLE001 - the per-frame boundary of DESIGN §4
                self.counters["frames_failed"] += 1
                self.counters[f"failed_{type(e).__name__}"] += 1
                self._warn_once(frame.camera, f"failed_{type(e).__name__}",
                                f"frame {frame.frame_index} dropped "
                                f"({type(e).__name__}: {str(e)[:200]})")
                continue
            n += 1
        return n

    def _process(self, cam: _Camera, frame: AssembledFrame) -> None:
        t_assembled = time.time()
        try:
            coded, side = codec_input(frame, cam.meta, self.section.max_regions,
                                      cam.codec.task_streams, cam.side)
        except PacketError as e:
            self.counters["frames_undecodable"] += 1
            self.counters[f"undecodable_{e.reason}"] += 1
            if e.reason == "side_reference":  # a frame before this one was lost: resync
                self._request_refresh(cam, frame.frame_index)
            return
        t0 = time.perf_counter()
        decoded = cam.codec.decompress(coded)
        t1 = time.perf_counter()
        errors = decoded.get("errors", {})
        self.counters["region_errors"] += sum(1 for k in errors if k >= 0)
        if decoded.get("needs_refresh"):
            self._request_refresh(cam, frame.frame_index)
        info = {"camera": cam.meta.camera, "frame": frame.frame_index,
                "capture_us": frame.capture_us, "regions": side.regions, "region_errors": errors,
                "complete": frame.complete, "meta": cam.meta}
        t2 = time.perf_counter()
        image = cam.composer.compose(decoded, info)
        t3 = time.perf_counter()
        results = {}
        for task, model in self.models.items():
            res = model.run(image, {**info, "task": task})
            results[task] = res
            if self.publish is not None:
                body = {"camera": cam.meta.camera, "frame": frame.frame_index,
                        "capture_us": frame.capture_us, "task": task, **res}
                self.publish(topic(self.prefix, cam.meta.camera, "results", task),
                             json.dumps(body).encode())
        cam.writer.write(frame.frame_index, image)
        if self.section.out is not None:
            d = self.section.out / cam.meta.camera / "results"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{frame.frame_index:06d}.json").write_text(json.dumps({
                "camera": cam.meta.camera, "frame": frame.frame_index,
                "capture_us": frame.capture_us, "complete": frame.complete,
                "has_rest": bool(decoded.get("has_rest")),
                "regions": [r.to_json() for r in side.regions], "tasks": results}))
        t_done = time.time()
        self.latencies_ms.append((t_done * 1e6 - frame.capture_us) / 1000)
        if cam.last_index is not None and frame.frame_index > cam.last_index + 1:
            # never seen at all (lost in a broker restart, before subscribing, ...)
            self.counters["frames_missing"] += frame.frame_index - cam.last_index - 1
        cam.last_index = frame.frame_index
        cam.frames += 1
        cam.bytes += frame.wire_bytes
        self.frames_out += 1
        now = time.monotonic()
        self.first_out = self.first_out or now
        self.last_out = now
        if self.timings is not None:
            self.timings.write(json.dumps({
                "camera": cam.meta.camera, "frame": frame.frame_index,
                "capture_us": frame.capture_us, "t_assembled": t_assembled,
                "t_decoded": t_done, "wire_bytes": frame.wire_bytes,
                "complete": frame.complete}) + "\n")
        if self.on_frame is not None:
            self.on_frame(cam.meta.camera, frame.frame_index, image)
        if self.listeners:
            stages = {"decode": t1 - t0, "compose": t3 - t2, "tasks": time.perf_counter() - t3}
            self._report(cam, frame, image, results, side.regions,
                         bool(decoded.get("has_rest")), t_done, stages)

    def _report(self, cam: _Camera, frame: AssembledFrame, image: np.ndarray,
                results: dict[str, Any], regions: list[Any], has_rest: bool, t: float,
                stages: dict[str, float]) -> None:
        sizes = {"side": len(frame.side or b""), "rest": len(frame.rest or b""),
                 **{f"task/{k}": len(v) for k, v in frame.tasks.items()}}
        report = FrameReport(cam.meta.camera, frame.frame_index, frame.capture_us,
                             cam.meta.fps, image, results, list(regions),
                             {k: v for k, v in sizes.items() if v}, frame.complete, has_rest, t,
                             stages)
        for listener in self.listeners:
            listener(report)

    def _request_refresh(self, cam: _Camera, index: int) -> None:
        """Ask the edge for an intra frame (``<prefix>/<camera>/control``), rate-limited."""
        self.counters["frames_missing_reference"] += 1
        now = time.monotonic()
        if self._control is None or now - cam.last_refresh_request < self.section.refresh_interval_s:
            return
        cam.last_refresh_request = now
        self.counters["refresh_requests"] += 1
        req = {"request": "refresh", "camera": cam.meta.camera, "frame": index}
        if self.key is not None:
            req = self.key.sign_control(req, cam.meta.session)
        self._control(topic(self.prefix, cam.meta.camera, "control"), json.dumps(req).encode())

    def close(self) -> None:
        for cam in self.cameras.values():
            cam.writer.close()

    # -- summary ------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        rc = self.reasm.counters
        cams = list(self.cameras.values())
        pixels = sum(c.frames * c.meta.width * c.meta.height for c in cams) + self._gone["pixels"]
        seconds = sum(c.frames / c.meta.fps for c in cams) + self._gone_seconds
        total = sum(c.bytes for c in cams) + self._gone["bytes"]
        lat = np.array(self.latencies_ms) if self.latencies_ms else None
        span = (self.last_out - self.first_out) if self.first_out and self.last_out else 0.0
        drops = {k[5:]: v for k, v in rc.items() if k.startswith("drop_")}
        return {
            "frames": self.frames_out,
            "complete": rc["frames_complete"],
            "partial": rc["frames_partial"],
            "dropped": rc["frames_dropped"] + rc["frames_evicted"]
            + self.counters["frames_refused"] + self.counters["frames_undecodable"]
            + self.counters["frames_failed"],
            "missing": self.counters["frames_missing"],
            "bytes": total,
            "bytes_by_substream": {k[6:]: v for k, v in rc.items() if k.startswith("bytes_")},
            "bpp": round(total * 8 / pixels, 5) if pixels else 0.0,
            "kbps": round(total * 8 / 1000 / seconds, 2) if seconds else 0.0,
            "fps": round((self.frames_out - 1) / span, 2) if span > 0 else 0.0,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if lat is not None else None,
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 2) if lat is not None else None,
            "packets": rc["packets"],
            "dropped_packets": rc["dropped_packets"],
            "drop_reasons": drops,
            "duplicates": rc["duplicates"],
            "region_errors": self.counters["region_errors"],
            "missing_reference": self.counters["frames_missing_reference"],
            "refresh_requests": self.counters["refresh_requests"],
            "cameras": sorted(self.cameras),
            "cameras_evicted": self.counters["cameras_evicted"],
            "camera_cap_refused": self.counters["messages_over_camera_cap"],
            "refused": dict(self.refused),
        }
