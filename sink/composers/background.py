"""``background``: for static cameras, paste each frame's task regions onto the latest full view.

The edge sends ``rest`` only every N frames and when the view outside the task regions changed
(sdk/rest.py); in between, this composer keeps the last decoded full frame as the background,
so a full-view stream costs little more than the task stream.
Until the first ``rest`` arrives it falls back to the codec's own reconstruction.

::

    rest arrived? --yes--> background := decoded full frame ------------------+
                  --no---> canvas := background (or x_hat before the first rest) + region crops
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from discover.sink.composers.base import COMPOSERS, Composer, ComposerConfig
from pydantic import Field


class BackgroundConfig(ComposerConfig):
    type: Literal["background"] = "background"
    max_age_frames: int = Field(300, ge=1, description="forget a background older than this "
                                                       "many frames (the scene may have changed)")


@COMPOSERS.register
class BackgroundComposer(Composer):
    key = "background"
    Config = BackgroundConfig
    config: BackgroundConfig
    needs_rest = True

    def __init__(self, config: BackgroundConfig) -> None:
        super().__init__(config)
        self._background: np.ndarray | None = None
        self._background_frame = -1

    def compose(self, decoded: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        frame = int(info["frame"])
        if decoded.get("has_rest"):
            self._background = decoded["x_hat"]
            self._background_frame = frame
            return decoded["x_hat"]
        bg = self._background
        if bg is None or not 0 <= frame - self._background_frame <= self.config.max_age_frames \
                or bg.shape != decoded["x_hat"].shape:
            return decoded["x_hat"]
        canvas = bg.copy()
        boxes = {r.rid: r.box for r in info["regions"]}
        for rid, crop in decoded.get("region_pixels", {}).items():
            x0, y0, x1, y1 = boxes[rid]
            canvas[y0:y1, x0:x1] = crop
        return canvas
