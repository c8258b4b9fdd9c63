"""Boxes the grounder finds and the region table the edge sends with every frame."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from discover.sdk.boxes import pair_iou

if TYPE_CHECKING:
    import numpy as np

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


def select_regions(dets: Sequence[Detection], task_labels: dict[str, set[str]], width: int,
                   height: int, *, align: int, margin: float, min_score: float = 0.0,
                   dedupe_iou: float = 0.6, max_regions: int = 256,
                   known_labels: set[str] | None = None, merge: bool = True) -> list[Region]:
    """The regions an edge codes from a grounder's boxes (``CameraAgent.regions`` and the
    benchmarks use this one function).

    Boxes some task wants (by label or alias; ``object`` serves every task), best first, padded
    and snapped to the codec grid. A box overlapping a kept one by more than ``dedupe_iou`` is
    the same object under another class (a van as truck, bus and car): not coded again, the kept
    region serves its tasks too. Then overlapping regions merge where that codes fewer cells
    (:func:`merge_overlaps`). Labels outside ``known_labels`` become ``object``."""
    any_object = "object"  # sdk.grounders.ANY_OBJECT (not imported: grounders import us)
    order = list(task_labels)
    out: list[Region] = []
    raw: list[Sequence[float]] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if d.score < min_score or len(out) >= max_regions:
            continue
        names = {d.label, *d.aliases}
        tasks = tuple(t for t in order if d.label == any_object or names & task_labels[t])
        if not tasks:
            continue
        dup = next((i for i, b in enumerate(raw)
                    if dedupe_iou > 0 and pair_iou(b, d.box) > dedupe_iou), None)
        if dup is not None:
            kept = out[dup]
            kept.tasks = tuple(t for t in order if t in kept.tasks or t in tasks)
            continue
        box = pad_and_clip(d.box, margin, width, height, align)
        if box is not None:
            label = d.label if known_labels is None or d.label in known_labels else any_object
            out.append(Region(len(out), box, label, float(d.score), tasks))
            raw.append(d.box)
    return merge_overlaps(out) if merge else out


def merge_overlaps(regions: Sequence[Region]) -> list[Region]:
    """Merge overlapping regions where one box costs no more cells than the two did.

    A codec codes every region's cells on their own (so each decodes alone), which codes an
    overlap once per region; nanodet's boxes on a crowded street overlap a lot. Two regions
    merge into their bounding box when that box's area is at most the sum of theirs, and only
    when no sink gets more than before: the same tasks, or one box inside the other with the
    inner one's tasks among the outer one's. The merged region keeps the better-scoring
    region's label and score and serves both regions' tasks. Repeats until nothing merges;
    region ids are renumbered in order."""
    out = [Region(r.rid, r.box, r.label, r.score, tuple(r.tasks)) for r in regions]
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                ix = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
                iy = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
                if ix <= 0 or iy <= 0:
                    continue
                box = (min(a.box[0], b.box[0]), min(a.box[1], b.box[1]),
                       max(a.box[2], b.box[2]), max(a.box[3], b.box[3]))
                union_area = (box[2] - box[0]) * (box[3] - box[1])
                if union_area > a.area + b.area:
                    continue
                same = set(a.tasks) == set(b.tasks)
                inside = (box == a.box and set(b.tasks) <= set(a.tasks)) or \
                         (box == b.box and set(a.tasks) <= set(b.tasks))
                if not (same or inside):
                    continue
                best = a if a.score >= b.score else b
                tasks = tuple(dict.fromkeys((*a.tasks, *b.tasks)))
                out[i] = Region(a.rid, box, best.label, best.score, tasks)
                del out[j]
                merged = True
                break
            if merged:
                break
    return [Region(k, r.box, r.label, r.score, r.tasks) for k, r in enumerate(out)]


def region_mask(regions: Iterable[Region], width: int, height: int,
                grow: int = 0) -> np.ndarray:
    """A height x width boolean mask, True inside any region's box grown by ``grow`` pixels."""
    import numpy as np

    mask = np.zeros((height, width), dtype=bool)
    for r in regions:
        x0, y0, x1, y1 = (int(v) for v in r.box)
        mask[max(0, y0 - grow):min(height, y1 + grow),
             max(0, x0 - grow):min(width, x1 + grow)] = True
    return mask


def area_share(regions: Sequence[Region], width: int, height: int) -> float:
    """Share of the frame covered by the union of the regions' boxes."""
    if not regions or width <= 0 or height <= 0:
        return 0.0
    return float(region_mask(regions, width, height).mean())


def paste_regions(canvas: np.ndarray, regions: Iterable[Region],
                  crops: Mapping[int, np.ndarray]) -> list[int]:
    """Put each decoded region crop into ``canvas`` (in place) at its region's box, in the
    order of ``crops`` (where boxes overlap, the later crop wins, as the codecs decode them);
    a crop whose id is not in ``regions`` is left out. Returns the ids pasted, in that order."""
    boxes = {r.rid: r.box for r in regions}
    pasted = []
    for rid, crop in crops.items():
        box = boxes.get(rid)
        if box is None:
            continue
        x0, y0, x1, y1 = (int(v) for v in box)
        canvas[y0:y1, x0:x1] = crop
        pasted.append(rid)
    return pasted
