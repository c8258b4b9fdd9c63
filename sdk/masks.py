"""COCO run-length encoding (RLE) of binary masks, byte-compatible with pycocotools.

Segmentation results are published as JSON, so masks travel as COCO's compressed RLE
``{"size": [h, w], "counts": str}``: the mask is read column by column (Fortran order), runs
alternate 0s and 1s starting with 0s, and the run lengths are written as pycocotools'
``rleToString`` does (every run from the third on as the difference to the run two before,
5 bits per character with a continuation bit, offset by 48). Any COCO tool
(``pycocotools.mask.decode``, the COCO evaluator) reads it; this module only needs NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RLE = dict[str, Any]


def _runs(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a flattened bool mask, the first run counting 0s (possibly empty)."""
    flat = mask.ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds)
    return np.concatenate(([0], runs)) if flat[0] else runs


def _counts_to_string(runs: np.ndarray) -> str:
    """pycocotools ``rleToString``: delta against the run two before, 5-bit LEB128-like chars."""
    out = bytearray()
    values = runs.tolist()
    for i, x in enumerate(values):
        if i > 2:
            x -= values[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(c + 48)
    return out.decode("ascii")


def _string_to_counts(s: str) -> list[int]:
    """pycocotools ``rleFrString``: the inverse of :func:`_counts_to_string`."""
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE counts string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray) -> RLE:
    """Compressed COCO RLE of a 2-D mask (any dtype; nonzero is foreground), JSON-ready."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    h, w = m.shape
    return {"size": [int(h), int(w)], "counts": _counts_to_string(_runs(m.astype(bool)))}


def decode(rle: RLE) -> np.ndarray:
    """The (h, w) bool mask of a COCO RLE: compressed (``counts`` a string, as from
    :func:`encode` or pycocotools) or uncompressed (``counts`` a list of run lengths)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = _string_to_counts(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise ValueError(f"RLE runs sum to {sum(runs)} with negatives={any(r < 0 for r in runs)}, "
                         f"expected {h * w} for size {h}x{w}")
    values = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(values, runs)
    return flat.reshape((h, w), order="F")


def area(rle: RLE) -> int:
    """Foreground pixel count of a RLE without decoding it."""
    counts = rle["counts"]
    runs = _string_to_counts(counts) if isinstance(counts, (str, bytes)) else list(counts)
    return int(sum(runs[1::2]))


def bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, w, h]`` of a mask's foreground (all zeros for an empty mask)."""
    m = np.asarray(mask, bool)
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
