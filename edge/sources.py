"""Frame sources for the edge: video files and live URLs through PyAV (live ones reconnect with
backoff), webcams by device index, and image folders. Frames are BGR uint8 with a capture time.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from discover.sdk.errors import DiscoverError

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
SOURCE_HELP = "pass a video file, an RTSP/HTTP URL, a webcam index (0, 1, ...) or an image folder"


@dataclass(slots=True)
class SourceFrame:
    index: int
    image: np.ndarray
    capture_us: int


class Source:
    """Iterable of frames. ``fps`` is the nominal rate (for pacing and kbit/s)."""

    width: int
    height: int
    fps: float
    live: bool = False
    description: str = ""

    def frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _av_error(spec: str, e: Exception) -> DiscoverError:
    reason = getattr(e, "strerror", None) or str(e) or e.__class__.__name__
    return DiscoverError(f"cannot read video {spec!r}: {reason}; {SOURCE_HELP}")


class AvSource(Source):
    """A file, URL or device that FFmpeg opens."""

    def __init__(self, spec: str, *, live: bool, fmt: str | None = None,
                 options: dict[str, str] | None = None) -> None:
        self.spec, self.live, self.fmt, self.options = spec, live, fmt, options or {}
        self.description = spec
        self.reconnects = 0
        self._open()

    def _open(self) -> None:
        try:
            self._c = av.open(self.spec, format=self.fmt, options=self.options, timeout=10.0)
            vs = self._c.streams.video
            if not vs:
                raise DiscoverError(f"{self.spec!r} has no video stream; {SOURCE_HELP}")
            if self._c.format.name == "tty":  # FFmpeg renders any .txt/.nfo file as ANSI art
                raise DiscoverError(f"{self.spec!r} is a text file, not a video; {SOURCE_HELP}")
            self._s = vs[0]
            self._s.thread_type = "AUTO"
            self.width, self.height = self._s.codec_context.width, self._s.codec_context.height
            rate = self._s.average_rate or self._s.guessed_rate
            self.fps = float(rate) if rate else 25.0
            # one decode generator for the whole file: a second one would start where the
            # first stopped demuxing and lose the frames still inside the decoder (a short clip
            # with B-frame delay is all "inside" after the first frame)
            self._frames = self._c.decode(self._s)
            self._first = next(self._frames)
            self.width, self.height = self._first.width, self._first.height
        except DiscoverError:
            raise
        except (av.FFmpegError, OSError, StopIteration, ValueError) as e:
            if isinstance(e, StopIteration):
                raise DiscoverError(f"video {self.spec!r} has no frames; {SOURCE_HELP}") from None
            raise _av_error(self.spec, e) from None

    def frames(self) -> Iterator[np.ndarray]:
        backoff = 1.0
        while True:
            try:
                if self._first is not None:
                    first, self._first = self._first, None
                    yield first.to_ndarray(format="bgr24")
                for f in self._frames:
                    yield f.to_ndarray(format="bgr24")
                    backoff = 1.0
                if not self.live:
                    return
                log.warning("live source %s ended; reopening", self.spec)
            except (av.FFmpegError, OSError) as e:
                if not self.live:
                    raise _av_error(self.spec, e) from None
                log.warning("live source %s failed (%s); reconnecting in %.0f s",
                            self.spec, e, backoff)
            self._c.close()
            while True:
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                try:
                    self._open()
                    self.reconnects += 1
                    break
                except DiscoverError as e:
                    log.warning("%s; retrying in %.0f s", e, backoff)

    def close(self) -> None:
        self._c.close()


class ImageFolderSource(Source):
    """Images of a folder in name order, at a nominal ``fps``; unreadable files are skipped."""

    def __init__(self, folder: Path, fps: float) -> None:
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DiscoverError(f"image folder {folder} has no images "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))}); {SOURCE_HELP}")
        first = cv2.imread(str(self.paths[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise DiscoverError(f"cannot read image {self.paths[0]}; {SOURCE_HELP}")
        self.height, self.width = first.shape[:2]
        self.fps = fps
        self.description = str(folder)
        self.skipped = 0

    def frames(self) -> Iterator[np.ndarray]:
        for p in self.paths:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                self.skipped += 1
                log.warning("skipping unreadable image %s", p)
                continue
            if img.shape[:2] != (self.height, self.width):
                img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA)
            yield img


def open_source(spec: str, *, fps: float | None = None) -> Source:
    """Open what ``spec`` names; a one-line DiscoverError if it cannot be read."""
    if re.fullmatch(r"\d+", spec):
        dev = f"/dev/video{spec}"
        if not Path(dev).exists():
            raise DiscoverError(f"webcam {spec} not found ({dev} does not exist); {SOURCE_HELP}")
        return AvSource(dev, live=True, fmt="v4l2")
    if spec.startswith(LIVE_SCHEMES):
        opts = {"rtsp_transport": "tcp"} if spec.startswith(("rtsp://", "rtsps://")) else {}
        return AvSource(spec, live=True, options=opts)
    p = Path(spec)
    if p.is_dir():
        return ImageFolderSource(p, fps or 10.0)
    if not p.exists():
        raise DiscoverError(f"cannot read video {spec!r}: file not found; {SOURCE_HELP}")
    if not p.is_file():
        raise DiscoverError(f"cannot read video {spec!r}: not a regular file; {SOURCE_HELP}")
    src = AvSource(str(p), live=False)
    if fps:
        src.fps = fps
    return src


def paced(source: Source, *, realtime: bool, max_frames: int | None,
          speed: float = 1.0) -> Iterator[SourceFrame]:
    """Number and timestamp frames; with ``realtime`` sleep to the source's frame rate."""
    start = time.monotonic()
    for i, img in enumerate(source.frames()):
        if max_frames is not None and i >= max_frames:
            return
        if realtime and not source.live:
            delay = start + i / (source.fps * speed) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield SourceFrame(i, img, time.time_ns() // 1000)
