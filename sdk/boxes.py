"""Box geometry every part shares: IoU and greedy non-maximum suppression.

Boxes are ``x0, y0, x1, y1`` in pixels. One implementation serves the detectors (NanoDet, the
Open Images SSD, Grounding DINO), the region selection, the tracker, the temporal coder and
the AP evaluation, so they all agree on what "overlapping" means.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N x 4) with every box in ``b`` (M x 4): an N x M array;
    0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pair_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes, as :func:`box_iou` computes it, in plain floats: region selection
    and the temporal coder call it for thousands of pairs a frame, where numpy's per-call
    overhead would cost tens of milliseconds."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
             + max(b[2] - b[0], 0) * max(b[3] - b[1], 0) - inter)
    return float(inter / union) if union > 0 else 0.0


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
        groups: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: the indices kept, best score first (ties keep input
    order). A box is dropped when its IoU with a better kept box of the same group (class)
    exceeds ``iou_threshold``; boxes of different groups never suppress each other."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    group = np.zeros(len(boxes), np.int64) if groups is None else np.asarray(groups)
    kept = []
    while order.size:
        i, rest = order[0], order[1:]
        kept.append(i)
        iou = box_iou(boxes[i], boxes[rest])[0]
        order = rest[(iou <= iou_threshold) | (group[rest] != group[i])]
    return np.asarray(kept, dtype=np.int64)
