"""Error bars for a detection BD-rate: a paired bootstrap over the scored frames.

On a clip of 100 frames one rate point's mAP@0.5 moves by a few hundredths between two nearly
identical codings, and where the anchor's curve is flat that is a large BD-rate change. The
interval here says how much a BD-rate rests on which frames happened to be scored (frame
sampling; not the coding-to-coding noise, which needs repeated codings)::

    per point:  predictions ─► FrameMatches (matched to the references once)
    per draw:   frames drawn with replacement (the same draw for every point of every curve)
                ─► mAP@0.5 per point ─► BD-rate of test vs anchor (the caller's: bench
                   tasks' pchip on each curve's front)
    result:     the 2.5 / 50 / 97.5 percentiles over the draws where the BD-rate is defined

Rates are not resampled: a stream's bytes are what they are; the noise is in the score.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from discover.sdk.metrics import FrameMatches

#: (test points, anchor points, score key) -> (BD-rate % or None, note)
BDRate = Callable[[Sequence[dict[str, Any]], Sequence[dict[str, Any]], str],
                  tuple[float | None, str]]

#: the score the bootstrap recomputes (bench tasks' detection key)
KEY = "det_map50"


def _resampled(points: Sequence[dict[str, Any]], matches: Mapping[str, FrameMatches],
               draw: np.ndarray) -> list[dict[str, Any]]:
    """The points with their score recomputed on the frames of ``draw``."""
    return [{"kbps": p["kbps"], KEY: matches[p["point"]].map(draw)} for p in points
            if p["point"] in matches]


def bd_rate_interval(test: Sequence[dict[str, Any]], anchor: Sequence[dict[str, Any]],
                     test_matches: Mapping[str, FrameMatches],
                     anchor_matches: Mapping[str, FrameMatches], bd_rate: BDRate, *,
                     draws: int = 200, seed: int = 0) -> dict[str, Any]:
    """Percentile interval of the detection BD-rate of ``test`` against ``anchor``.

    ``test`` / ``anchor``: bench tasks' points (``point``, ``kbps``); ``*_matches``: each
    point's :class:`FrameMatches` by its ``point`` name, all over the same frames;
    ``bd_rate``: the BD-rate the headline figure uses (bench tasks': pchip on the front)."""
    sizes = {len(m) for m in (*test_matches.values(), *anchor_matches.values())}
    if len(sizes) != 1:
        raise ValueError(f"every point must be scored on the same frames (got sizes {sizes})")
    n = sizes.pop()
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        draw = rng.integers(0, n, size=n)
        bd, _ = bd_rate(_resampled(test, test_matches, draw),
                        _resampled(anchor, anchor_matches, draw), KEY)
        if bd is not None:
            values.append(bd)
    out: dict[str, Any] = {"draws": draws, "defined": len(values), "seed": seed,
                           "method": "paired bootstrap over frames, percentile interval"}
    if values:
        lo, mid, hi = np.percentile(values, [2.5, 50, 97.5])
        out.update({"ci95": [round(float(lo), 2), round(float(hi), 2)],
                    "median": round(float(mid), 2)})
    return out
