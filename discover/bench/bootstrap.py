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


class FrameBootstrap:
    """Frames drawn with replacement, ``draws`` times, shared by every point of every curve
    (paired); each point's score on the draws is computed once, however many anchors it is
    compared with."""

    def __init__(self, n_frames: int, draws: int = 200, seed: int = 0) -> None:
        self.n_frames, self.draws, self.seed = n_frames, draws, seed
        self.idx = np.random.default_rng(seed).integers(0, n_frames, size=(draws, n_frames))
        self._scores: dict[FrameMatches, np.ndarray] = {}

    def scores(self, matches: FrameMatches) -> np.ndarray:
        """mAP@0.5 of one point on each draw."""
        if len(matches) != self.n_frames:
            raise ValueError(f"every point must be scored on the same frames (got {len(matches)} "
                             f"frames, the draws are over {self.n_frames})")
        if matches not in self._scores:
            self._scores[matches] = np.array([matches.map(d) for d in self.idx])
        return self._scores[matches]

    def _curve(self, points: Sequence[dict[str, Any]], matches: Mapping[str, FrameMatches],
               k: int) -> list[dict[str, Any]]:
        """The points with their score on draw ``k``."""
        return [{"kbps": p["kbps"], KEY: self.scores(matches[p["point"]])[k]} for p in points
                if p["point"] in matches]

    def interval(self, test: Sequence[dict[str, Any]], anchor: Sequence[dict[str, Any]],
                 test_matches: Mapping[str, FrameMatches],
                 anchor_matches: Mapping[str, FrameMatches], bd_rate: BDRate) -> dict[str, Any]:
        """Percentile interval of the detection BD-rate of ``test`` against ``anchor``.

        ``test`` / ``anchor``: bench tasks' points (``point``, ``kbps``); ``*_matches``: each
        point's :class:`FrameMatches` by its ``point`` name; ``bd_rate``: the BD-rate the
        headline figure uses (bench tasks': pchip on the front)."""
        values = []
        for k in range(self.draws):
            bd, _ = bd_rate(self._curve(test, test_matches, k),
                            self._curve(anchor, anchor_matches, k), KEY)
            if bd is not None:
                values.append(bd)
        out: dict[str, Any] = {"draws": self.draws, "defined": len(values), "seed": self.seed,
                               "method": "paired bootstrap over frames, percentile interval"}
        if values:
            lo, mid, hi = np.percentile(values, [2.5, 50, 97.5])
            out.update({"ci95": [round(float(lo), 2), round(float(hi), 2)],
                        "median": round(float(mid), 2)})
        return out


def bd_rate_interval(test: Sequence[dict[str, Any]], anchor: Sequence[dict[str, Any]],
                     test_matches: Mapping[str, FrameMatches],
                     anchor_matches: Mapping[str, FrameMatches], bd_rate: BDRate, *,
                     draws: int = 200, seed: int = 0) -> dict[str, Any]:
    """:meth:`FrameBootstrap.interval` for one pair of curves."""
    sizes = {len(m) for m in (*test_matches.values(), *anchor_matches.values())}
    if len(sizes) != 1:
        raise ValueError(f"every point must be scored on the same frames (got sizes {sizes})")
    boot = FrameBootstrap(sizes.pop(), draws, seed)
    return boot.interval(test, anchor, test_matches, anchor_matches, bd_rate)
