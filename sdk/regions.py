"""Boxes the grounder finds and the region table the edge sends with every frame."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclass(frozen=True, slots=True)
class Detection:
    """One grounded object: pixel box, label from the task profile, confidence in [0, 1].

    ``aliases`` are the other profile labels the same box answers for (a detector class that
    several labels map onto, e.g. person for "pedestrian" and "cyclist"), so a task listing any
    of them takes the box."""

    box: tuple[float, float, float, float]
    label: str
    score: float
    aliases: tuple[str, ...] = ()


@dataclass(slots=True)
class Region:
    """A task region as coded and sent: integer box, label, score and the tasks it serves."""

    rid: int
    box: Box
    label: str
    score: float
    tasks: tuple[str, ...] = field(default_factory=tuple)

    @property
    def area(self) -> int:
        return max(0, self.box[2] - self.box[0]) * max(0, self.box[3] - self.box[1])

    def to_json(self) -> dict:
        return {"id": self.rid, "label": self.label, "score": round(self.score, 4),
                "box": list(self.box), "tasks": list(self.tasks)}


def pad_and_clip(box: Sequence[float], margin: float, width: int, height: int,
                 align: int = 1) -> Box | None:
    """Grow a box by ``margin`` (fraction of its size, at least 2 px), snap it outwards to a
    multiple of ``align`` (the codec's block size) and clip it to the frame; None if empty."""
    x0, y0, x1, y1 = (float(v) for v in box)
    mx = max(2.0, (x1 - x0) * margin)
    my = max(2.0, (y1 - y0) * margin)
    x0, y0, x1, y1 = x0 - mx, y0 - my, x1 + mx, y1 + my
    a = max(1, int(align))
    ix0 = max(0, int(x0 // a) * a)
    iy0 = max(0, int(y0 // a) * a)
    ix1 = min(width, int(-(-x1 // a)) * a)
    iy1 = min(height, int(-(-y1 // a)) * a)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    return (ix0, iy0, ix1, iy1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def area_share(regions: Sequence[Region], width: int, height: int) -> float:
    """Share of the frame covered by the union of the regions' boxes."""
    if not regions or width <= 0 or height <= 0:
        return 0.0
    import numpy as np

    mask = np.zeros((height, width), dtype=bool)
    for r in regions:
        x0, y0, x1, y1 = r.box
        mask[y0:y1, x0:x1] = True
    return float(mask.mean())
