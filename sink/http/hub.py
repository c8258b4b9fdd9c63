"""The web view's state: per camera the newest composed frame, its results and a per-second
history of bit rate by substream and frame rate. Written by the sink thread (``on_frame``),
read by the web app's thread; everything shared is behind one lock."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from discover.sink.http import overlay
from discover.sink.http.restream import HlsRestream
from discover.sink.report import FrameReport


@dataclass
class _Second:
    t: int  # unix second
    frames: int = 0
    bytes: dict[str, int] = field(default_factory=dict)


@dataclass
class CameraView:
    """One camera as the web view knows it."""

    camera: str
    report: FrameReport
    version: int = 0
    frames: int = 0
    first_seen: float = field(default_factory=time.time)
    history: deque[_Second] = field(default_factory=deque)
    jpeg: bytes | None = None
    jpeg_version: int = -1
    restream: HlsRestream | None = None


class LiveHub:
    """Collects frame reports for the web app; ``history_s`` seconds of rates are kept."""

    def __init__(self, *, history_s: int = 300, jpeg_quality: int = 80,
                 restream: bool = True, restream_overlay: bool = True) -> None:
        self.history_s, self.jpeg_quality = history_s, jpeg_quality
        self.restream, self.restream_overlay = restream, restream_overlay
        self.started = time.time()
        self.closed = False
        self._cams: dict[str, CameraView] = {}
        self._lock = threading.Lock()

    # -- written by the sink ------------------------------------------------------------------

    def on_frame(self, r: FrameReport) -> None:
        """A pipeline listener: keep the frame, count its bytes, feed the restream."""
        now = int(r.decoded_at)
        with self._lock:
            cam = self._cams.get(r.camera)
            if cam is None:
                cam = self._cams[r.camera] = CameraView(r.camera, r)
                if self.restream:
                    cam.restream = HlsRestream(r.camera, draw_overlay=self.restream_overlay)
            cam.report = r
            cam.version += 1
            cam.frames += 1
            if not cam.history or cam.history[-1].t != now:
                cam.history.append(_Second(now))
            sec = cam.history[-1]
            sec.frames += 1
            for k, v in r.substream_bytes.items():
                sec.bytes[k] = sec.bytes.get(k, 0) + v
            while cam.history and cam.history[0].t <= now - self.history_s:
                cam.history.popleft()
            rs = cam.restream
        if rs is not None:
            rs.offer(r)

    def end_streams(self) -> None:
        """The sink stopped: end every restream's playlist (the files stay for players)."""
        with self._lock:
            streams = [c.restream for c in self._cams.values() if c.restream is not None]
        for rs in streams:
            rs.close()

    def close(self) -> None:
        self.closed = True
        with self._lock:
            streams = [c.restream for c in self._cams.values() if c.restream is not None]
        for rs in streams:
            rs.close(remove=True)

    # -- read by the web app ------------------------------------------------------------------

    def has(self, camera: str) -> bool:
        with self._lock:
            return camera in self._cams

    def cameras(self) -> list[dict[str, Any]]:
        with self._lock:
            cams = list(self._cams.values())
        return [self.describe(c) for c in sorted(cams, key=lambda c: c.camera)]

    def describe(self, cam: CameraView) -> dict[str, Any]:
        r = cam.report
        h, w = r.image.shape[:2]
        recent = [s for s in cam.history if s.t >= int(time.time()) - 10]
        span = max(1, min(10, int(time.time() - cam.first_seen) or 1))
        return {"id": cam.camera, "width": w, "height": h, "fps_nominal": r.fps,
                "frames": cam.frames, "last_frame": r.frame,
                "last_seen_s": round(time.time() - r.decoded_at, 2),
                "latency_ms": round(1000 * r.latency_s, 1),
                "fps": round(sum(s.frames for s in recent) / span, 2),
                "kbps": round(sum(sum(s.bytes.values()) for s in recent) * 8 / 1000 / span, 2),
                "tasks": sorted(r.results),
                "restream": f"/hls/{cam.camera}/index.m3u8" if cam.restream else None}

    def view(self, camera: str) -> CameraView | None:
        with self._lock:
            return self._cams.get(camera)

    def latest(self, camera: str) -> dict[str, Any] | None:
        cam = self.view(camera)
        return None if cam is None else cam.report.results_json()

    def overlay(self, camera: str) -> dict[str, Any] | None:
        cam = self.view(camera)
        if cam is None:
            return None
        r = cam.report
        h, w = r.image.shape[:2]
        return {"camera": camera, "frame": r.frame, "width": w, "height": h,
                "shapes": overlay.shapes(r.results)}

    def series(self, camera: str) -> dict[str, Any] | None:
        """Per second: kbit/s by substream and frames/s, oldest first (seconds without a
        frame are zeros)."""
        cam = self.view(camera)
        if cam is None:
            return None
        with self._lock:
            secs = {s.t: s for s in cam.history}
        now = int(time.time())
        start = min(secs, default=now)
        start = max(start, now - self.history_s + 1)
        subs = sorted({k for s in secs.values() for k in s.bytes})
        t = list(range(start, now + 1))
        kbps = {k: [round(secs[x].bytes.get(k, 0) * 8 / 1000, 2) if x in secs else 0.0
                    for x in t] for k in subs}
        fps = [secs[x].frames if x in secs else 0 for x in t]
        return {"camera": camera, "t": t, "kbps": kbps, "fps": fps}

    def jpeg(self, camera: str) -> tuple[bytes, int, FrameReport] | None:
        """The newest frame as JPEG, its version and report (encoded once per version)."""
        cam = self.view(camera)
        if cam is None:
            return None
        with self._lock:
            version, report, cached = cam.version, cam.report, cam.jpeg
            if cam.jpeg_version == version and cached is not None:
                return cached, version, report
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(report.image),
                               [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        data = buf.tobytes() if ok else b""
        with self._lock:
            if version >= cam.jpeg_version:
                cam.jpeg, cam.jpeg_version = data, version
        return data, version, report

    def version(self, camera: str) -> int:
        cam = self.view(camera)
        return -1 if cam is None else cam.version

    def restream_folder(self, camera: str):  # noqa: ANN201
        cam = self.view(camera)
        return None if cam is None or cam.restream is None else cam.restream.folder
