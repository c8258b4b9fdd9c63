"""``background``: for static cameras, show each frame's changes on a clean background.

The edge sends ``rest`` only every N frames and when the view outside the task regions changed
(sdk/rest.py); in between, this composer shows the current frame's changes on a background
image, so a full-view stream costs little more than the task stream.

How the background is made. It must not hold the objects themselves: a rest frame shows its
people where they were then, and pasting the people of a later frame onto it would show each
walking person twice (a ghost at the old place). So it is built only from rest pixels
*outside* the task regions of the frame that rest came with (grown by ``guard_px``, for the
parts of an object its box misses). Pixels no rest has shown clear yet (an object stood there
at every rest so far) are filled from the clean pixels around them (a push-pull fill over an
image pyramid: a smooth patch in the surrounding colours, a few ms), not by the object; the
next rest that shows them clear replaces the fill. Until the first rest arrives it falls back
to the codec's own reconstruction.

What is shown between rests depends on the codec:

* a codec that decodes the whole frame between rests (``Decoded.whole_frame``: the video
  codec's machine view, the task stream upscaled) lets the composer show it. The composer shows it wherever the scene changed since
  the background (a block test on grey levels, with hysteresis: ``changed_mask``) and in the
  regions, and the background elsewhere. So an object the grounder missed, or one that left
  the place an old rest showed it at, shows once: the background is never trusted where the
  current frame says otherwise.
* a region codec (``learned``, ``classical``) decodes only its regions: their crops are pasted
  on the background. An object no region holds shows where the last rest had it.

::

    rest arrived? --yes--> clean := clean | outside(regions + guard)
                           background[outside] := rest; background[~clean] := fill(background)
                           show the decoded full frame
                  --no---> whole-frame machine view M (Decoded.whole_frame)?
                             --yes--> show := changed(M, background) | regions
                                      canvas := background; canvas[show] := M
                             --no---> canvas := background + region crops
                           (x_hat itself before the first rest or after max_age_frames; a
                           task stream that did not decode: the background alone)
"""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np
from discover.sdk.codecs.base import SubstreamError
from discover.sdk.regions import paste_regions, region_mask
from discover.sink.composers.base import COMPOSERS, Composer, ComposerConfig
from pydantic import Field


class BackgroundConfig(ComposerConfig):
    type: Literal["background"] = "background"
    max_age_frames: int = Field(300, ge=1, description="forget a background older than this "
                                                       "many frames (the scene may have changed)")
    guard_px: int = Field(4, ge=0, le=64, description="grow each region by this many pixels "
                                                      "before taking background pixels around it")
    machine_view: Literal["auto", "on", "off"] = Field(
        "auto", description="between rests, show the codec's whole-frame machine view where "
        "the scene changed since the background (auto: when the codec decodes one, "
        "Decoded.whole_frame; off: paste the region crops only)")
    change_block: int = Field(8, ge=1, le=64, description="change test block size in pixels")
    change_high: float = Field(12.0, ge=0, description="a block whose mean grey difference "
                               "between machine view and background exceeds this changed")
    change_low: float = Field(6.0, ge=0, description="blocks over this that touch a changed "
                              "block changed too (hysteresis: the faint edges of an object)")
    change_grow: int = Field(1, ge=0, le=8, description="grow the changed blocks by this many "
                             "blocks")


def fill_holes(image: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """``image`` with the ``holes`` pixels replaced by a smooth fill from the pixels around
    them: average down an image pyramid with the known pixels as weights until every pixel has
    some, then blend back up (push-pull)."""
    ys, xs = np.nonzero(holes)
    if len(ys) == 0:
        return image
    pad = 16  # work on the holes' bounding box and a margin of known pixels around it
    y0, y1 = max(0, ys.min() - pad), min(holes.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(holes.shape[1], xs.max() + pad + 1)
    out = image.copy()
    out[y0:y1, x0:x1] = _push_pull(image[y0:y1, x0:x1], holes[y0:y1, x0:x1])
    return out


def _push_pull(image: np.ndarray, holes: np.ndarray) -> np.ndarray:
    k = (~holes).astype(np.float32)
    a = image.astype(np.float32) * k[..., None]
    levels = [(a, k)]
    while levels[-1][1].min() <= 0 and min(levels[-1][1].shape) > 1:
        a, k = levels[-1]
        levels.append((cv2.pyrDown(a), cv2.pyrDown(k)))
    a, k = levels[-1]
    est = a / np.maximum(k, 1e-6)[..., None]
    for a, k in reversed(levels[:-1]):
        up = cv2.pyrUp(est, dstsize=(a.shape[1], a.shape[0]))
        kk = np.clip(k, 0.0, 1.0)[..., None]
        est = a + (1.0 - kk) * up  # a is colour x weight: known pixels keep their colour
    out = image.copy()
    out[holes] = np.clip(est[holes] + 0.5, 0, 255).astype(np.uint8)
    return out


def changed_mask(view: np.ndarray, background: np.ndarray, block: int, high: float,
                 low: float, grow: int) -> np.ndarray:
    """True (per pixel) where ``view`` differs from ``background``: blocks whose mean grey
    difference exceeds ``high``, joined by the neighbouring blocks over ``low`` (hysteresis),
    grown by ``grow`` blocks."""
    h, w = view.shape[:2]
    diff = cv2.absdiff(cv2.cvtColor(view, cv2.COLOR_BGR2GRAY),
                       cv2.cvtColor(background, cv2.COLOR_BGR2GRAY))
    bh, bw = -(-h // block), -(-w // block)
    if (bh * block, bw * block) != (h, w):
        diff = cv2.copyMakeBorder(diff, 0, bh * block - h, 0, bw * block - w,
                                  cv2.BORDER_REPLICATE)
    score = cv2.resize(diff.astype(np.float32), (bw, bh), interpolation=cv2.INTER_AREA)
    n, labels = cv2.connectedComponents((score > low).astype(np.uint8), connectivity=8)
    seeded = np.zeros(n, np.uint8)
    seeded[labels[score > high]] = 1
    seeded[0] = 0  # label 0 is the unchanged blocks
    blocks = seeded[labels]
    if grow:
        blocks = cv2.dilate(blocks, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    up = cv2.resize(blocks, (bw * block, bh * block), interpolation=cv2.INTER_NEAREST)
    return up[:h, :w].astype(bool)


@COMPOSERS.register
class BackgroundComposer(Composer):
    key = "background"
    Config = BackgroundConfig
    config: BackgroundConfig
    needs_rest = True

    def __init__(self, config: BackgroundConfig) -> None:
        super().__init__(config)
        self._background: np.ndarray | None = None
        self._clean: np.ndarray | None = None  # pixels some rest showed outside every region
        self._filled = -1  # clean pixel count at the last hole fill (clean only grows)
        self._background_frame = -1

    def _take_rest(self, x_hat: np.ndarray, regions: list[Any]) -> None:
        outside = ~region_mask(regions, x_hat.shape[1], x_hat.shape[0], self.config.guard_px)
        if self._background is None or self._background.shape != x_hat.shape:
            self._background, self._clean, self._filled = x_hat.copy(), outside, -1
        else:
            assert self._clean is not None
            np.copyto(self._background, x_hat, where=outside[..., None])
            self._clean |= outside
        clean = int(np.count_nonzero(self._clean))
        if clean < self._clean.size and clean != self._filled:  # holes are new or shrank
            self._background = fill_holes(self._background, ~self._clean)
            self._filled = clean

    def compose(self, decoded: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        frame = int(info["frame"])
        if decoded.get("has_rest"):
            self._take_rest(decoded["x_hat"], list(info["regions"]))
            self._background_frame = frame
            return decoded["x_hat"]
        bg = self._background
        if bg is None or not 0 <= frame - self._background_frame <= self.config.max_age_frames \
                or bg.shape != decoded["x_hat"].shape:
            return decoded["x_hat"]
        if self._machine_view(decoded) and SubstreamError.TASK not in (decoded.get("errors") or {}):
            return self._with_changes(decoded["x_hat"], bg, list(info["regions"]))
        canvas = bg.copy()
        paste_regions(canvas, info["regions"], decoded.get("region_pixels", {}))
        return canvas

    def _machine_view(self, decoded: dict[str, Any]) -> bool:
        mode = self.config.machine_view
        if mode == "auto":  # the codec says whether its x_hat is a whole decoded frame
            return bool(decoded.get("whole_frame"))
        return mode == "on"

    def _with_changes(self, view: np.ndarray, bg: np.ndarray, regions: list[Any]) -> np.ndarray:
        """The background, with the machine view where the scene changed and in the regions."""
        c = self.config
        show = changed_mask(view, bg, c.change_block, c.change_high, c.change_low,
                            c.change_grow) | region_mask(regions, view.shape[1], view.shape[0])
        canvas = bg.copy()
        cv2.copyTo(view, show.view(np.uint8), canvas)
        return canvas
