"""COCO conventions shared by the task models: category ids, result entries, class filters.

Results use COCO's own formats so any COCO tool reads them: ``bbox`` is ``[x, y, width,
height]`` in frame pixels, ``category_id`` is COCO's 91-id numbering (1 = person ... 90 =
toothbrush, with the 11 ids COCO 2014/2017 never annotated left out), segmentations are
compressed RLE (:mod:`sdk.masks`).

COCO-80 class index (NanoDet's order, the 80 annotated classes in id order) -> COCO id::

    0-10 -> 1-11    11-23 -> 13-25   24-25 -> 27-28   26-39 -> 31-44   40-59 -> 46-65
    60 -> 67        61 -> 70         62-72 -> 72-82   73-79 -> 84-90

(unused ids: 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91). torchvision's COCO detectors already
predict the 91-id numbering: their label index is the category id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

COCO80_TO_COCO91: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54,
    55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81,
    82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip
PERSON_CATEGORY_ID = 1


def xywh(box: Sequence[float], ndigits: int = 2) -> list[float]:
    """x0, y0, x1, y1 -> COCO ``[x, y, w, h]``, rounded for JSON."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [round(x0, ndigits), round(y0, ndigits), round(x1 - x0, ndigits),
            round(y1 - y0, ndigits)]


def detection(label: str, score: float, box: Sequence[float], category_id: int) -> dict[str, Any]:
    """One COCO-style detection entry."""
    return {"label": label, "score": round(float(score), 4), "bbox": xywh(box),
            "category_id": int(category_id)}


def label_filter(classes: Iterable[str] | None, known: Sequence[str], model: str) -> set[str] | None:
    """Normalise a config's ``classes`` list against the model's class names (None = all).

    Unknown names are an error naming them, so a typo never silently yields no results."""
    if classes is None:
        return None
    wanted = {" ".join(str(c).lower().split()) for c in classes}
    names = {n.lower(): n for n in known}
    unknown = sorted(w for w in wanted if w not in names)
    if unknown:
        from discover.sdk.errors import DiscoverError

        raise DiscoverError(f"task model {model}: classes {unknown} are not among its class "
                            f"names (e.g. {', '.join(list(known)[:5])}); fix 'classes'")
    return {names[w] for w in wanted}


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 clipped to the frame."""
    out = np.asarray(boxes, np.float32).copy()
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out
