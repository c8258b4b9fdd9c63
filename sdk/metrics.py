"""COCO-style average precision for labelled boxes (seed §4: detection AP).

The same numbers as ``pycocotools``' bounding-box evaluation with its defaults (all areas, no
crowd regions, at most ``max_detections`` per frame and class), computed on plain Python lists
so neither COCO JSON files nor pycocotools are needed::

    preds = [[((x0, y0, x1, y1), "person", 0.9), ...], ...]   # one list per frame
    refs  = [[((x0, y0, x1, y1), "person"), ...], ...]        # same frames, same order
    average_precision(preds, refs).map          # mAP@0.5 over the classes in refs
    coco_map(preds, refs)["map_50_95"]          # mAP@[.5:.95]

Per class and IoU threshold: predictions of every frame are ranked by score; in each frame a
prediction (best score first) takes the unmatched reference of its class with the highest IoU
if that IoU is at least the threshold (a true positive), else it is a false positive. The
precision/recall curve is made monotonic and sampled at 101 recall points (0, 0.01, ..., 1;
precision 0 past the highest recall reached); AP is their mean. A class with no reference has
no AP and is left out of the mean; a class with references but no predictions has AP 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from discover.sdk.boxes import box_iou

BoxLike = Sequence[float]
Prediction = tuple[BoxLike, str, float]
"""(box x0, y0, x1, y1 in pixels; label; score)"""
Reference = tuple[BoxLike, str]
"""(box x0, y0, x1, y1 in pixels; label)"""

#: COCO's IoU thresholds for mAP@[.5:.95]
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
#: COCO's recall sampling points
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class APResult:
    """AP at one IoU threshold: per class (classes with references only) and their mean."""

    iou_threshold: float
    per_class: dict[str, float]
    references: dict[str, int]

    @property
    def map(self) -> float:
        """Mean AP over the classes present in the references (0.0 if there are none)."""
        return float(np.mean(list(self.per_class.values()))) if self.per_class else 0.0

    def to_json(self) -> dict:
        return {"iou_threshold": self.iou_threshold, "map": round(self.map, 6),
                "per_class": {k: round(v, 6) for k, v in sorted(self.per_class.items())},
                "references": dict(sorted(self.references.items()))}


def _match(pred_boxes: np.ndarray, ref_boxes: np.ndarray,
           thresholds: np.ndarray) -> np.ndarray:
    """Greedy COCO matching in one frame and class; predictions already best first.
    Returns a (thresholds x predictions) bool array: true positive or not."""
    t_count, n = len(thresholds), len(pred_boxes)
    tp = np.zeros((t_count, n), dtype=bool)
    if n == 0 or len(ref_boxes) == 0:
        return tp
    ious = box_iou(pred_boxes, ref_boxes)
    for ti, t in enumerate(thresholds):
        taken = np.zeros(len(ref_boxes), dtype=bool)
        for d in range(n):
            cand = np.where(taken, -1.0, ious[d])
            # the best unmatched reference, the last one on ties (as pycocotools); COCO starts
            # from min(t, 1 - 1e-10) and keeps IoU >= it, so IoU equal to the threshold matches
            g = len(cand) - 1 - int(np.argmax(cand[::-1]))
            if cand[g] >= min(t, 1 - 1e-10):
                taken[g] = True
                tp[ti, d] = True
    return tp


def _ap(scores: np.ndarray, tp: np.ndarray, n_refs: int) -> float:
    """101-point interpolated AP of one class at one threshold (pycocotools' accumulate)."""
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    hits = tp[order]
    tps = np.cumsum(hits, dtype=np.float64)
    recall = tps / n_refs
    # pycocotools adds machine epsilon to the denominator, which is never 0 here (one
    # prediction per rank): without it a perfect result is exactly 1.0, not 1 - 2e-16
    precision = tps / np.arange(1, len(tps) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotonic from the right
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean())


#: one frame's matching per class: (scores best first, hits thresholds x predictions, refs)
FrameMatch = dict[str, tuple[np.ndarray, np.ndarray, int]]


def _match_frame(frame_preds: Iterable[Prediction], frame_refs: Iterable[Reference],
                 th: np.ndarray, max_detections: int | None) -> FrameMatch:
    """One frame's predictions matched to its references, per class (classes on either side)."""
    by_class_p: dict[str, list[tuple[BoxLike, float]]] = {}
    by_class_r: dict[str, list[BoxLike]] = {}
    for box, label, score in frame_preds:
        by_class_p.setdefault(label, []).append((box, float(score)))
    for box, label in frame_refs:
        by_class_r.setdefault(label, []).append(box)
    out: FrameMatch = {}
    for label in by_class_p.keys() | by_class_r.keys():
        ps = by_class_p.get(label, [])
        s = np.array([p[1] for p in ps], dtype=np.float64)
        order = np.argsort(-s, kind="mergesort")
        if max_detections is not None:
            order = order[:max_detections]
        boxes = np.array([ps[i][0] for i in order], dtype=np.float64).reshape(-1, 4)
        r = np.array(by_class_r.get(label, []), dtype=np.float64).reshape(-1, 4)
        out[label] = (s[order], _match(boxes, r, th), len(r))
    return out


def _accumulate(frames: Iterable[FrameMatch], columns: Sequence[int],
                ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """class -> AP at each threshold column in ``columns`` (classes with references only), and
    reference counts."""
    scores: dict[str, list[np.ndarray]] = {}
    hits: dict[str, list[np.ndarray]] = {}
    n_refs: dict[str, int] = {}
    for fm in frames:
        for label, (s, h, n) in fm.items():
            if n:
                n_refs[label] = n_refs.get(label, 0) + n
            if len(s):
                scores.setdefault(label, []).append(s)
                hits.setdefault(label, []).append(h)
    out: dict[str, np.ndarray] = {}
    for label, n in n_refs.items():
        if label not in scores:
            out[label] = np.zeros(len(columns))
            continue
        s = np.concatenate(scores[label])
        h = np.concatenate(hits[label], axis=1)
        out[label] = np.array([_ap(s, h[c], n) for c in columns])
    return out, n_refs


class FrameMatches:
    """Predictions matched to references once, frame by frame, at one or more IoU thresholds,
    so that AP over any multiset of those frames (a bootstrap resample) costs no matching::

        m = FrameMatches(preds, refs)
        m.map()                      # == average_precision(preds, refs).map
        m.map([3, 3, 0, 7, ...])     # the same frames drawn with replacement

    ``preds[i]`` and ``refs[i]`` are frame i's predictions ``(box, label, score)`` and
    references ``(box, label)``; ``max_detections`` keeps the best-scoring predictions per frame
    and class (COCO: 100; None keeps all)."""

    def __init__(self, preds: Sequence[Iterable[Prediction]],
                 refs: Sequence[Iterable[Reference]],
                 iou_thresholds: float | Sequence[float] = 0.5, *,
                 max_detections: int | None = 100) -> None:
        if len(preds) != len(refs):
            raise ValueError(f"preds has {len(preds)} frames but refs has {len(refs)}; "
                             "pass one list per frame for both")
        self.thresholds = np.atleast_1d(np.asarray(iou_thresholds, dtype=np.float64))
        self.frames = [_match_frame(p, r, self.thresholds, max_detections)
                       for p, r in zip(preds, refs, strict=True)]

    def __len__(self) -> int:
        return len(self.frames)

    def _chosen(self, indices: Iterable[int] | None) -> list[FrameMatch]:
        return self.frames if indices is None else [self.frames[i] for i in indices]

    def per_class(self, indices: Iterable[int] | None = None,
                  ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """class -> AP per threshold over the frames at ``indices`` (repeats count again;
        default: every frame once), classes with references only; and reference counts."""
        return _accumulate(self._chosen(indices), range(len(self.thresholds)))

    def map(self, indices: Iterable[int] | None = None) -> float:
        """mAP at the first threshold over the frames at ``indices`` (as :meth:`per_class`):
        the mean over the classes with references among them (0.0 if none)."""
        per, _ = _accumulate(self._chosen(indices), [0])
        return float(np.mean([v[0] for v in per.values()])) if per else 0.0


def average_precision(preds: Sequence[Iterable[Prediction]], refs: Sequence[Iterable[Reference]],
                      iou_threshold: float = 0.5, *, max_detections: int | None = 100,
                      ) -> APResult:
    """Per-class AP and mAP at one IoU threshold over a list of frames.

    ``preds[i]`` and ``refs[i]`` are frame i's predictions ``(box, label, score)`` and
    references ``(box, label)``; boxes are ``x0, y0, x1, y1``. ``max_detections`` keeps the
    best-scoring predictions per frame and class (COCO: 100; None keeps all)."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1] (got {iou_threshold})")
    per, n_refs = FrameMatches(preds, refs, iou_threshold,
                               max_detections=max_detections).per_class()
    return APResult(iou_threshold, {k: float(v[0]) for k, v in per.items()}, n_refs)


def coco_map(preds: Sequence[Iterable[Prediction]], refs: Sequence[Iterable[Reference]], *,
             max_detections: int | None = 100) -> dict:
    """COCO's headline box figures: mAP@0.5, mAP@0.75, mAP@[.5:.95] (mean over the ten
    thresholds 0.5, 0.55, ..., 0.95 and the classes in ``refs``), and per-class AP@0.5 and
    AP@[.5:.95]."""
    return coco_map_of(FrameMatches(preds, refs, COCO_IOU_THRESHOLDS,
                                    max_detections=max_detections))


def coco_map_of(matches: FrameMatches) -> dict:
    """:func:`coco_map` of predictions already matched at ``COCO_IOU_THRESHOLDS``."""
    if tuple(matches.thresholds.tolist()) != COCO_IOU_THRESHOLDS:
        raise ValueError("coco_map_of needs matches at COCO_IOU_THRESHOLDS")
    per, n_refs = matches.per_class()
    if not per:
        return {"map_50": 0.0, "map_75": 0.0, "map_50_95": 0.0, "per_class_50": {},
                "per_class_50_95": {}, "references": {}}
    table = np.stack([per[k] for k in sorted(per)])  # classes x thresholds
    return {"map_50": float(table[:, 0].mean()), "map_75": float(table[:, 5].mean()),
            "map_50_95": float(table.mean()),
            "per_class_50": {k: float(per[k][0]) for k in sorted(per)},
            "per_class_50_95": {k: float(per[k].mean()) for k in sorted(per)},
            "references": dict(sorted(n_refs.items()))}
