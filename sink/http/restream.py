"""HLS restream of a camera's composed view: H.264 in MPEG-TS segments, cut and listed by
FFmpeg's own ``hls`` muxer (through PyAV) into a temporary folder the web app serves, so
ffplay, VLC, NVRs and browsers with an HLS player open ``/hls/<camera>/index.m3u8``.

::

    sink thread --offer(report)--> 1-frame mailbox (newest wins) --encoder thread-->
        [overlay drawn] -> libx264 (ultrafast, zerolatency, a keyframe every second)
        -> hls muxer: seg00000.ts ... + index.m3u8 (last ``list_size`` segments)

Timestamps come from the frame index at the camera's nominal rate, so the restream plays at
the camera's pace whatever the sink's; a stream restart (index going back) starts a new
encoder. The encoder thread never blocks the sink: frames that arrive while it is busy are
replaced by newer ones and counted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import av
from discover.sink.http import overlay
from discover.sink.report import FrameReport

log = logging.getLogger(__name__)

PLAYLIST = "index.m3u8"


class HlsRestream:
    """One camera's restream; ``offer`` frames, serve files from ``folder``."""

    def __init__(self, camera: str, *, segment_s: float = 1.0, list_size: int = 6,
                 draw_overlay: bool = True, preset: str = "ultrafast") -> None:
        self.camera = camera
        self.segment_s, self.list_size = segment_s, list_size
        self.draw_overlay, self.preset = draw_overlay, preset
        self.folder = Path(tempfile.mkdtemp(prefix=f"discover-hls-{camera}-"))
        self.frames_encoded = 0
        self.frames_skipped = 0
        self._mailbox: FrameReport | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._out: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._first = 0
        self._last = -1
        self._thread = threading.Thread(target=self._run, name=f"hls-{camera}", daemon=True)
        self._thread.start()

    @property
    def playlist(self) -> Path:
        return self.folder / PLAYLIST

    def offer(self, report: FrameReport) -> None:
        """Hand a frame to the encoder thread (never blocks)."""
        with self._cond:
            if self._mailbox is not None:
                self.frames_skipped += 1
            self._mailbox = report
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._mailbox is None and not self._closing:
                    self._cond.wait()
                report, self._mailbox = self._mailbox, None
            if report is not None:
                try:
                    self._encode(report)
                except (av.FFmpegError, ValueError, OSError) as e:
                    log.warning("restream %s: frame %d not encoded (%s)", self.camera,
                                report.frame, e)
                    self._finish()
            elif self._closing:
                self._finish()
                return

    def _open(self, report: FrameReport) -> None:
        h, w = report.image.shape[:2]
        fps = Fraction(report.fps or 10).limit_denominator(1001)
        for old in self.folder.glob("*"):
            old.unlink()
        out = av.open(str(self.playlist), mode="w", format="hls", options={
            "hls_time": f"{self.segment_s:g}", "hls_list_size": str(self.list_size),
            "hls_flags": "delete_segments+temp_file+independent_segments",
            "hls_segment_filename": str(self.folder / "seg%05d.ts")})
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        s.codec_context.time_base = 1 / fps
        s.options = {"preset": self.preset, "tune": "zerolatency",
                     "g": str(max(1, round(float(fps) * self.segment_s)))}
        self._out, self._stream, self._first = out, s, report.frame

    def _encode(self, report: FrameReport) -> None:
        if self._out is not None and report.frame <= self._last:
            self._finish()  # the stream restarted: new encoder, new playlist
        if self._out is None:
            self._open(report)
        assert self._out is not None and self._stream is not None
        img = report.image
        if self.draw_overlay:
            img = overlay.draw(img, overlay.shapes(report.results))
        img = img[: self._stream.height, : self._stream.width]
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts = report.frame - self._first
        frame.time_base = self._stream.codec_context.time_base
        for p in self._stream.encode(frame):
            self._out.mux(p)
        self._last = report.frame
        self.frames_encoded += 1

    def _finish(self) -> None:
        """Flush and close: the last segment is written and the playlist ends (VOD)."""
        if self._out is None:
            return
        try:
            assert self._stream is not None
            for p in self._stream.encode():
                self._out.mux(p)
            self._out.close()
        except (av.FFmpegError, ValueError, OSError) as e:
            log.warning("restream %s: closing the stream failed (%s)", self.camera, e)
        self._out = self._stream = None
        self._last = -1

    def close(self, remove: bool = False) -> None:
        """Encode what is waiting, end the playlist; ``remove`` also deletes the files."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(10.0)
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)
