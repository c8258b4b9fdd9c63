"""``video``: per-task machine-view streams on a standard video codec (HEVC by default, H.264,
SVT-AV1), with the human view as a stream of its own.

::

    frame --downscale to task scale--> ROI boxes (the task's regions) --x265--> task/<task>
      |                                  (one elementary stream per task, one chunk a frame)
      +--(when the rest scheduler says so)--------------------------> x265 --> rest
    side: the region table only (the frame header's varints); no codec bytes

    sink: task/<t> --decoder per camera and substream--> upscale --> x_hat, region crops
          rest     --its own decoder-------------------------------> x_hat (human view)

Why a standard codec: its temporal prediction makes a static background almost free, which a
per-frame region codec cannot match on a CPU gateway (DESIGN §1, "Two codec families"). Each
substream decodes from its own keyframes; a decoder that missed a chunk or joined late reports
``needs_refresh`` until the next keyframe, and the edge makes every stream's next frame a
keyframe on a refresh request. Low delay: no B-frames, no lookahead, one frame thread.
"""

from __future__ import annotations

import threading
from typing import Literal

import cv2
import numpy as np
from discover.sdk.codecs.base import (
    CODECS,
    Codec,
    CodecConfig,
    CodedFrame,
    Compressed,
    Decoded,
    FrameStats,
    SubstreamError,
)
from discover.sdk.codecs.video.elementary import FAMILIES, StreamDecoder, StreamEncoder
from discover.sdk.regions import Region
from pydantic import BaseModel, ConfigDict, Field

#: quality step (1 = lowest rate) -> CRF of the task streams, per family (x265/x264 0-51,
#: SVT-AV1 0-63); chosen on the development frames (docs/video-codec.md)
CRF_STEPS = {"hevc": (44, 41, 38, 35, 32, 29), "h264": (42, 39, 36, 33, 30, 27),
             "av1": (58, 52, 46, 40, 34, 28)}


class TaskStreamConfig(BaseModel):
    """Per-task overrides of the machine view (unset: the codec's own settings)."""

    model_config = ConfigDict(extra="forbid")
    scale: float | None = Field(None, gt=0.05, le=1.0)
    crf: int | None = Field(None, ge=0, le=63)
    roi_offset: float | None = Field(None, ge=-1.0, le=1.0)


class VideoConfig(CodecConfig):
    type: Literal["video"] = "video"
    encoder: Literal["hevc", "h264", "av1"] = Field(
        "hevc", description="hevc (libx265), h264 (libx264) or av1 (libsvtav1; ignores ROI)")
    quality: int = Field(3, ge=1, le=6, description="rate step of the task streams, 1 = lowest "
                                                    "(CRF per step: sdk/codecs/video/codec.py)")
    crf: int | None = Field(None, ge=0, le=63, description="task stream CRF (overrides quality)")
    scale: float = Field(1.0, gt=0.05, le=1.0, description="task streams' resolution scale")
    roi_offset: float = Field(0.0, ge=-1.0, le=1.0, description="QP offset of the task regions "
                              "(fraction of the QP range, e.g. -0.2; 0: no ROI); x265/x264 "
                              "only. Off by default: on the development clip -0.2 doubled the "
                              "rate for the same score (docs/video-codec.md)")
    preset: str = Field("medium", pattern=r"^[a-z0-9]+$", description="encoder preset")
    gop: int = Field(0, ge=0, description="keyframe every N coded frames per stream (0: only the "
                     "first and on a sink's refresh request)")
    params: str = Field("", description="extra encoder parameters, key=value joined by ':', "
                        "after the codec's own: x265-params, x264-params or svtav1-params "
                        "(e.g. ipratio=2 for hevc, enable-cdef=1 for av1)")
    rest_crf: int | None = Field(None, ge=0, le=63, description="CRF of the human view (rest). "
                                 "Unset: the task streams' CRF, and no rest at all while a "
                                 "task stream is at full scale (it is the whole view at that "
                                 "quality already; a viewer composes from it). Set it to send "
                                 "a better human view than the machine view")
    rest_scale: float = Field(1.0, gt=0.05, le=1.0)
    threads: int | None = Field(None, ge=1, le=16, description="encoder threads per stream "
                                "(default 1: the other core grounds)")
    tasks: dict[str, TaskStreamConfig] = Field(default_factory=dict,
                                               description="per-task scale / crf / roi_offset")


def _even(v: float) -> int:
    return max(16, int(round(v / 2)) * 2)


@CODECS.register
class VideoCodec(Codec):
    key = "video"
    Config = VideoConfig
    config: VideoConfig
    align = 8
    task_streams = True

    def __init__(self, config: VideoConfig) -> None:
        super().__init__(config)
        self.fps = 10.0
        self._enc: dict[str, StreamEncoder] = {}
        self._dec: dict[str, StreamDecoder] = {}
        self._refresh = threading.Event()

    @property
    def predictive(self) -> bool:
        return True  # P-frames

    # -- settings ---------------------------------------------------------------------------

    def _task(self, task: str) -> tuple[float, int, float]:
        """(scale, crf, roi offset) of one task's stream."""
        c, o = self.config, self.config.tasks.get(task) or TaskStreamConfig()
        crf = o.crf if o.crf is not None else c.crf if c.crf is not None else \
            CRF_STEPS[c.encoder][c.quality - 1]
        return (o.scale or c.scale, crf,
                o.roi_offset if o.roi_offset is not None else c.roi_offset)

    @property
    def rest_redundant(self) -> bool:
        """No rest unless it adds something: with ``rest_crf`` unset and a task stream at full
        scale, rest would code the same frame at the same CRF again (development clip, viewer
        bench: rest every 10th frame cost 35 kbit/s of 138 and the view came out 0.15 dB
        worse than without it; docs/video-codec.md)."""
        c = self.config
        return (c.rest_crf is None and c.rest_scale >= 1.0
                and any(self._task(t)[0] >= 1.0 for t in self.tasks))

    def start(self, tasks: list[str] | tuple[str, ...], fps: float) -> None:
        super().start(tasks, fps)
        self.fps = fps or 10.0

    def request_refresh(self) -> None:
        """A sink lost a chunk or joined late: every stream's next frame is a keyframe."""
        self._refresh.set()

    # -- edge -------------------------------------------------------------------------------

    def _encoder(self, name: str, w: int, h: int, crf: int, roi: float) -> StreamEncoder:
        enc = self._enc.get(name)
        if enc is None or enc.size != (w, h):
            if enc is not None:
                enc.close()
            c = self.config
            enc = self._enc[name] = StreamEncoder(c.encoder, w, h, crf, c.preset, c.gop, roi,
                                                  c.threads or 1, self.fps, c.params,
                                                  machine=name != "rest")
        return enc

    def compress(self, frame: np.ndarray, regions: list[Region], send_rest: bool) -> Compressed:
        h, w = frame.shape[:2]
        key = self._refresh.is_set()
        self._refresh.clear()
        tasks = self.tasks or tuple(dict.fromkeys(t for r in regions for t in r.tasks))
        scaled: dict[tuple[int, int], np.ndarray] = {(w, h): frame}

        def at_scale(scale: float) -> np.ndarray:
            """The frame at ``scale``, resized once per size for all streams of this frame."""
            size = (w, h) if scale >= 1 else (_even(w * scale), _even(h * scale))
            if size not in scaled:
                scaled[size] = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            return scaled[size]

        out: dict[str, bytes] = {}
        keys = 0
        for t in tasks:
            scale, crf, roi = self._task(t)
            img = at_scale(scale)
            sh, sw = img.shape[:2]
            fx, fy = sw / w, sh / h
            boxes = [(int(r.box[0] * fx), int(r.box[1] * fy), -int(-r.box[2] * fx),
                      -int(-r.box[3] * fy)) for r in regions if t in r.tasks]
            out[t], k = self._encoder(f"task/{t}", sw, sh, crf, roi).encode(img, boxes, key)
            keys += k
        rest = None
        if send_rest:
            c = self.config
            img = at_scale(c.rest_scale)
            crf = c.rest_crf if c.rest_crf is not None else self._task("")[1]
            rest, k = self._encoder("rest", img.shape[1], img.shape[0], crf, 0.0).encode(
                img, [], key)
            keys += k
        n = len(out) + (rest is not None)
        return Compressed(side=b"", tasks=out, rest=rest,
                          stats=FrameStats(intra=keys == n, modes={"keyframe": keys,
                                                                   "predicted": n - keys}))

    def close(self) -> None:
        for enc in self._enc.values():
            enc.close()
        self._enc.clear()

    # -- sink -------------------------------------------------------------------------------

    def _decode(self, name: str, chunk: bytes, w: int, h: int) -> tuple[np.ndarray | None, str | None]:
        dec = self._dec.get(name)
        if dec is None:
            dec = self._dec[name] = StreamDecoder(self.config.encoder)
        img, why = dec.decode(chunk)
        if img is not None and img.shape[:2] != (h, w):
            # cubic, not bilinear: half-scale streams, development frames: -20 % rate at equal
            # detection score, -29 % at equal PSNR, for 0.3 ms more a frame (docs/video-codec.md)
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
        return img, why

    def decompress(self, coded: CodedFrame | dict) -> Decoded:
        f = CodedFrame.coerce(coded)
        w, h = f.size
        errors: dict[int, str] = {}
        refresh = False
        views: list[np.ndarray] = []
        for t, chunk in f.tasks.items():
            img, why = self._decode(f"task/{t}", chunk, w, h)
            if img is None:
                errors[SubstreamError.TASK] = f"task/{t}: {why}"
                refresh = True
            else:
                views.append(img)
        rest = None
        if f.rest is not None:
            rest, why = self._decode("rest", f.rest, w, h)
            if rest is None:
                errors[SubstreamError.REST] = f"rest: {why}"
                refresh = True
        machine = views[0] if views else rest
        pixels: dict[int, np.ndarray] = {}
        if machine is not None:
            for r in f.table:
                x0, y0, x1, y1 = r.box
                pixels[r.rid] = machine[y0:y1, x0:x1].copy()
        x_hat = rest if rest is not None else machine
        if x_hat is None:
            x_hat = np.full((h, w, 3), 128, np.uint8)
        return Decoded(x_hat=x_hat, region_pixels=pixels, has_rest=rest is not None,
                       errors=errors, background=rest, needs_refresh=refresh,
                       whole_frame=bool(views))


__all__ = ["FAMILIES", "VideoCodec", "VideoConfig"]
