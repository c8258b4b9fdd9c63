"""The detection BD-rate's bootstrap interval (discover/bench/bootstrap.py) on synthetic
detections whose answer is known: identical curves, a curve at twice the rate, noisy scores."""

from __future__ import annotations

import numpy as np
import pytest
from discover.sdk.metrics import FrameMatches

from discover.bench.bootstrap import bd_rate_interval
from discover.bench.tasks import bd_rate

BOX = (10.0, 10.0, 60.0, 90.0)


def detections(hit: float, frames: int, seed: int) -> tuple[list, list]:
    """Two references a frame; each found (a close box) with probability ``hit`` at a random
    score, a stray box now and then."""
    rng = np.random.default_rng(seed)
    preds, refs = [], []
    for _ in range(frames):
        fr = [(BOX, "person"), ((200.0, 50.0, 260.0, 110.0), "car")]
        fp = [((b[0] + 2, b[1] + 1, b[2] - 1, b[3] + 2), lb, float(rng.uniform(0.3, 1)))
              for b, lb in fr if rng.random() < hit]
        if rng.random() < 0.3:
            fp.append(((300.0, 300.0, 340.0, 360.0), "person", float(rng.uniform(0, 1))))
        preds.append(fp)
        refs.append(fr)
    return preds, refs


def curve(kbps: list[float], hits: list[float], frames: int, seed: int
          ) -> tuple[list[dict], dict[str, FrameMatches]]:
    """Bench tasks' points and their matches: one point per (rate, hit probability)."""
    points, matches = [], {}
    for i, (k, h) in enumerate(zip(kbps, hits, strict=True)):
        m = FrameMatches(*detections(h, frames, seed + i))
        name = f"p{i}"
        points.append({"point": name, "kbps": k, "det_map50": m.map()})
        matches[name] = m
    return points, matches


def test_identical_curves_give_zero_in_every_draw():
    pts, m = curve([20, 40, 80, 160], [0.5, 0.7, 0.85, 0.95], 60, 0)
    r = bd_rate_interval(pts, pts, m, m, bd_rate, draws=50)
    assert r["defined"] == 50 and r["ci95"] == [0.0, 0.0] and r["median"] == 0.0


def test_the_same_scores_at_twice_the_rate_is_plus_100_percent_in_every_draw():
    pts, m = curve([20, 40, 80, 160], [0.5, 0.7, 0.85, 0.95], 60, 0)
    doubled = [{**p, "kbps": 2 * p["kbps"]} for p in pts]
    r = bd_rate_interval(doubled, pts, m, m, bd_rate, draws=40)
    assert r["ci95"] == [pytest.approx(100.0, abs=0.01), pytest.approx(100.0, abs=0.01)]


def test_noisy_scores_give_an_interval_around_the_estimate():
    test, tm = curve([25, 50, 100, 200], [0.5, 0.7, 0.85, 0.95], 80, 10)
    anchor, am = curve([20, 40, 80, 160], [0.5, 0.7, 0.85, 0.95], 80, 20)
    bd, _ = bd_rate(test, anchor, "det_map50")
    r = bd_rate_interval(test, anchor, tm, am, bd_rate, draws=200, seed=3)
    lo, hi = r["ci95"]
    assert r["defined"] > 150 and lo < hi
    assert lo <= bd <= hi and lo <= r["median"] <= hi
    # the same seed draws the same frames
    assert bd_rate_interval(test, anchor, tm, am, bd_rate, draws=200, seed=3) == r


def test_points_scored_on_different_frames_are_refused():
    a, am = curve([20, 40], [0.5, 0.9], 30, 0)
    b, bm = curve([20, 40], [0.5, 0.9], 31, 0)
    with pytest.raises(ValueError, match="same frames"):
        bd_rate_interval(a, b, am, bm, bd_rate, draws=5)
