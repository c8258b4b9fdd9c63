"""Where composed frames go: a PNG per frame, one MP4 per camera (PyAV), or nowhere."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from discover.sdk.errors import DiscoverError


class FrameWriter:
    def write(self, index: int, image: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NullWriter(FrameWriter):
    def write(self, index: int, image: np.ndarray) -> None:
        pass


class PngWriter(FrameWriter):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, image: np.ndarray) -> None:
        path = self.folder / f"{index:06d}.png"
        if not cv2.imwrite(str(path), image):
            raise DiscoverError(f"cannot write {path}; check that the --out folder is writable")


class Mp4Writer(FrameWriter):
    """H.264 (CRF 18) at the stream's frame rate; frames keep their size."""

    def __init__(self, path: Path, fps: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps = path, fps
        self._c: av.container.OutputContainer | None = None

    def write(self, index: int, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self._c is None:
            self._c = av.open(str(self.path), "w")
            self._s = self._c.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self._s.width, self._s.height = w - w % 2, h - h % 2
            self._s.pix_fmt = "yuv420p"
            self._s.options = {"crf": "18"}
        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(image[: self._s.height, : self._s.width]), format="bgr24")
        self._c.mux(self._s.encode(frame))

    def close(self) -> None:
        if self._c is not None:
            self._c.mux(self._s.encode(None))
            self._c.close()
            self._c = None


def make_writer(kind: str, out: Path | None, camera: str, fps: float) -> FrameWriter:
    if out is None or kind == "none":
        return NullWriter()
    if kind == "mp4":
        return Mp4Writer(out / camera / f"{camera}.mp4", fps)
    return PngWriter(out / camera / "frames")
