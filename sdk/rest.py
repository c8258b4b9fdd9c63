"""When the edge sends the ``rest`` substream: every N frames, and when the background changed.

A sink with the ``background`` composer pastes each frame's task regions onto the last full
view it decoded, so between two ``rest`` frames it shows the background as it was at the last
one. A periodic rest bounds how stale that gets; the change trigger sends one as soon as the
part of the view outside the task regions no longer matches it (a parked car left, lights
went on, the camera was moved), so a static camera can use a long interval without showing a
stale view for long.

::

    frame -> grey -> 1/8-size thumbnail --|. - thumbnail at the last rest| > PIXEL_CHANGE--+
          outside the frame's task regions: share of cells changed > on_change? --> rest

The share is taken over the cells outside the current task regions only (objects the task
follows move all the time; they are sent anyway). Where an object stood at the last rest and
has left, the thumbnail differs from the last rest's: that is a change the background view
would show as a ghost, and it counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import cv2
import numpy as np
from discover.sdk.regions import Region

CELL = 8  #: thumbnail cell size in pixels
PIXEL_CHANGE = 0.08  #: a cell changed when its grey level moved by more than this (of 255)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """The frame as a float32 grey thumbnail in [0, 1], one value per CELL x CELL block."""
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    th, tw = thumb_shape(*gray.shape[:2])
    return cv2.resize(gray, (tw, th), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def thumb_shape(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of :func:`thumbnail` for a frame of this size."""
    return max(1, height // CELL), max(1, width // CELL)


def background_change(thumb: np.ndarray, ref: np.ndarray, regions: Sequence[Region],
                      width: int, height: int) -> float:
    """Share of the thumbnail cells outside ``regions`` whose grey level moved by more than
    PIXEL_CHANGE between ``ref`` and ``thumb`` (0 when the regions cover everything)."""
    th, tw = thumb.shape
    keep = np.ones((th, tw), bool)
    sx, sy = tw / width, th / height
    for r in regions:
        x0, y0, x1, y1 = r.box
        keep[int(y0 * sy):int(np.ceil(y1 * sy)), int(x0 * sx):int(np.ceil(x1 * sx))] = False
    if not keep.any():
        return 0.0
    return float((np.abs(thumb - ref)[keep] > PIXEL_CHANGE).mean())


class RestScheduler:
    """Decides per frame whether ``rest`` goes out.

    ``interval``: every N-th frame (frame index multiple of N); 0 turns rest off altogether
    (a camera that serves task substreams only), whatever the other settings.
    ``on_change``: also when more than this share of the background changed since the last
    rest (0: off), but not sooner than ``min_gap`` frames after it; a large ``interval`` with
    ``on_change`` sends rest almost only on changes. ``request()``: the next frame carries rest
    (a sink asked for a refresh).
    """

    def __init__(self, interval: int, on_change: float = 0.0, min_gap: int = 1) -> None:
        self.interval, self.on_change, self.min_gap = interval, on_change, max(1, min_gap)
        self._ref: np.ndarray | None = None
        self._last = -1
        self._requested = False
        self.reasons: Counter[str] = Counter()  #: rests sent, by trigger

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def request(self) -> None:
        """Send rest with the next frame (a late-joining viewer needs a full view)."""
        self._requested = self.enabled

    def due(self, index: int, frame: np.ndarray, regions: Sequence[Region]) -> bool:
        """Whether frame ``index`` carries rest; when it does, it becomes the reference."""
        if not self.enabled:
            return False
        reason, thumb = "", None
        if self._requested:
            reason = "requested"
        elif index % self.interval == 0:
            reason = "periodic"
        elif self.on_change > 0:
            h, w = frame.shape[:2]
            if self._ref is None or self._ref.shape != thumb_shape(h, w):
                reason = "first"
            elif index - self._last >= self.min_gap:  # no thumbnail within min_gap of a rest
                thumb = thumbnail(frame)
                if background_change(thumb, self._ref, regions, w, h) > self.on_change:
                    reason = "change"
        if not reason:
            return False
        if thumb is None and self.on_change > 0:
            thumb = thumbnail(frame)
        self._requested = False
        self._last = index
        self._ref = thumb
        self.reasons[reason] += 1
        return True
