"""``motion``: class-agnostic grounding by background subtraction (OpenCV MOG2).

For static cameras with no detector: whatever moves is a region. Objects that never move are
never sent, so this is a baseline and a fallback, not a semantic grounder.

::

    frame -> downscale -> MOG2 foreground (shadows dropped) -> open/close/dilate
          -> connected components -> boxes >= min_area -> scale back
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
from discover.sdk.grounders.base import ANY_OBJECT, GROUNDERS, Grounder, GrounderConfig
from discover.sdk.regions import Detection
from pydantic import Field


class MotionConfig(GrounderConfig):
    type: Literal["motion"] = "motion"
    scale: float = Field(0.5, gt=0, le=1, description="process at this fraction of the size")
    history: int = Field(100, ge=2, description="frames the background model remembers")
    var_threshold: float = Field(25.0, gt=0, description="MOG2 variance threshold")
    min_area: float = Field(0.0015, ge=0, le=1, description="smallest box, share of the frame")
    dilate: int = Field(7, ge=0, description="dilation (pixels at processing scale) to merge blobs")


@GROUNDERS.register
class MotionGrounder(Grounder):
    key = "motion"
    Config = MotionConfig
    config: MotionConfig
    class_agnostic = True

    def __init__(self, config: MotionConfig) -> None:
        super().__init__(config)
        self._bg = cv2.createBackgroundSubtractorMOG2(
            history=config.history, varThreshold=config.var_threshold, detectShadows=True)
        k = max(1, config.dilate)
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._dilate = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        self._frames = 0

    def ground(self, frame: np.ndarray, labels: Sequence[str]) -> list[Detection]:
        c = self.config
        h, w = frame.shape[:2]
        small = cv2.resize(frame, (max(1, round(w * c.scale)), max(1, round(h * c.scale))),
                           interpolation=cv2.INTER_AREA)
        fg = self._bg.apply(small)
        self._frames += 1
        if self._frames == 1:
            return []  # the model has seen nothing yet: everything would be foreground
        fg = (fg == 255).astype(np.uint8)  # 127 marks shadows
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, self._open)
        if c.dilate:
            fg = cv2.dilate(fg, self._dilate)
        n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        min_px = c.min_area * small.shape[0] * small.shape[1]
        out = []
        for i in range(1, n):
            x, y, bw, bh, area = stats[i]
            if bw * bh < min_px:
                continue
            fill = area / float(bw * bh)
            if fill < c.min_score:
                continue
            s = 1.0 / c.scale
            out.append(Detection((x * s, y * s, (x + bw) * s, (y + bh) * s), ANY_OBJECT,
                                 float(min(1.0, 0.5 + fill / 2))))
        return out
