"""Rate-distortion maths for the codec benchmarks: Bjontegaard deltas, PSNR and MS-SSIM.

Bjontegaard delta rate (VCEG-M33): fit log10(rate) as a function of quality for the anchor
and the test curve, integrate both over the quality interval the two curves share (never
extrapolated) and turn the mean log-rate difference into a percentage::

    bd_rate = (10 ** ((I_test - I_anchor) / (q_hi - q_lo)) - 1) * 100

Negative: the test codec needs fewer bits for the same quality. ``bd_quality`` (BD-PSNR) is the
mirror: quality fitted over log10(rate), mean quality difference over the shared log-rate
interval. Two fits are offered:

* ``cubic``: one least-squares polynomial per curve, degree 3 (lower with fewer points), as in
  VCEG-M33;
* ``pchip``: piecewise cubic Hermite interpolation with Fritsch-Carlson slopes, integrated
  exactly, as the JCT-VC / JVET common-test-condition sheets do (stable where a single cubic
  wiggles).

Where no value can be given (fewer than two usable points, no overlapping range) the functions
return ``(None, reason)``, never a number made up by extrapolation.

Distortion: :func:`psnr` over all samples of the two images (RGB, the learned-compression
convention), :func:`masked_psnr` over a pixel mask (task regions), and :func:`ms_ssim`
(Wang, Simoncelli & Bovik 2003): 5 scales, Gaussian window 11 with sigma 1.5, K1 = 0.01,
K2 = 0.03, weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333, computed on each RGB channel and
averaged (as pytorch-msssim, which CompressAI's evaluation uses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

Method = Literal["cubic", "pchip"]
BDResult = tuple[float | None, str]

#: MS-SSIM scale weights (Wang et al. 2003), finest scale first
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
#: PSNR / MS-SSIM dB reported for identical images instead of infinity (JSON has no inf)
MAX_DB = 100.0


# -- Bjontegaard ------------------------------------------------------------------------------

def _clean(rate: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(log10 rate, quality) of the usable points: rate > 0, both finite."""
    r = np.asarray(rate, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    if r.shape != q.shape:
        raise ValueError(f"rate has {r.size} values but quality has {q.size}")
    ok = np.isfinite(r) & np.isfinite(q) & (r > 0)
    return np.log10(r[ok]), q[ok]


def _distinct(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by x, points with equal x merged (mean y): what a piecewise fit needs."""
    xs, inv = np.unique(x, return_inverse=True)
    ys = np.bincount(inv, weights=y) / np.bincount(inv)
    return xs, ys


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson slopes: monotone between points, shape-preserving three-point ends."""
    h = np.diff(x)
    d = np.diff(y) / h
    n = len(x)
    if n == 2:
        return np.array([d[0], d[0]])
    m = np.zeros(n)
    for k in range(1, n - 1):
        if d[k - 1] * d[k] > 0:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            m[k] = (w1 + w2) / (w1 / d[k - 1] + w2 / d[k])

    def end(h0: float, h1: float, d0: float, d1: float) -> float:
        s = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if np.sign(s) != np.sign(d0):
            return 0.0
        if np.sign(d0) != np.sign(d1) and abs(s) > 3 * abs(d0):
            return 3 * d0
        return float(s)

    m[0] = end(h[0], h[1], d[0], d[1])
    m[-1] = end(h[-1], h[-2], d[-1], d[-2])
    return m


def _hermite_integral(x: np.ndarray, y: np.ndarray, m: np.ndarray, lo: float, hi: float) -> float:
    """Exact integral over [lo, hi] (inside [x0, xn]) of the cubic Hermite spline (x, y, m)."""

    def antiderivative(t: float, k: int) -> float:
        # integral from 0 to t (t in [0, 1]) of the Hermite basis on segment k, times its width
        hk = x[k + 1] - x[k]
        t2, t3, t4 = t * t, t ** 3, t ** 4
        return hk * (y[k] * (t4 / 2 - t3 + t) + hk * m[k] * (t4 / 4 - 2 * t3 / 3 + t2 / 2)
                     + y[k + 1] * (-t4 / 2 + t3) + hk * m[k + 1] * (t4 / 4 - t3 / 3))

    total = 0.0
    for k in range(len(x) - 1):
        a, b = max(lo, x[k]), min(hi, x[k + 1])
        if b <= a:
            continue
        hk = x[k + 1] - x[k]
        total += antiderivative((b - x[k]) / hk, k) - antiderivative((a - x[k]) / hk, k)
    return total


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: Method) -> float | None:
    """Integral over [lo, hi] of the curve y(x) fitted with ``method``; None if it cannot be
    fitted (fewer than two distinct x)."""
    xs, ys = _distinct(x, y)
    if len(xs) < 2:
        return None
    if method == "cubic":
        deg = min(3, len(xs) - 1)
        poly = np.polyint(np.polyfit(x, y, deg))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo))
    if method == "pchip":
        return _hermite_integral(xs, ys, _pchip_slopes(xs, ys), lo, hi)
    raise ValueError(f"unknown BD fit {method!r}; use 'cubic' or 'pchip'")


def _monotone(log_rate: np.ndarray, quality: np.ndarray, tol: float = 1e-9) -> bool:
    """Quality never falls as the rate rises (ties allowed)."""
    order = np.argsort(log_rate, kind="stable")
    return bool(np.all(np.diff(quality[order]) >= -tol))


def _shared(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    if len(np.unique(a)) < 2 or len(np.unique(b)) < 2:
        return None
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    return (float(lo), float(hi)) if hi > lo else None


def front(log_rate: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of the points on the rate-quality front, cheapest first: a point stays when its
    quality beats every cheaper point's (a point that costs more for less is one nobody would
    operate at). Equal rates keep the best quality."""
    order = np.lexsort((-quality, log_rate))
    keep, best = [], -np.inf
    for i in order:
        if quality[i] > best and (not keep or log_rate[i] > log_rate[keep[-1]]):
            keep.append(int(i))
            best = quality[i]
    return np.array(keep, dtype=int)


def bd_rate(rate_anchor: Sequence[float], quality_anchor: Sequence[float],
            rate_test: Sequence[float], quality_test: Sequence[float], *,
            method: Method = "cubic", on_front: bool = False) -> BDResult:
    """Bjontegaard delta rate of test vs anchor in percent, and a note saying over which
    quality range (or why there is no value). Points with rate <= 0 or a non-finite value are
    left out. A curve whose quality does not rise with rate has no BD-rate, unless
    ``on_front``: then each curve's dominated points (:func:`front`) are left out first, and
    the note says how many."""
    la, qa = _clean(rate_anchor, quality_anchor)
    lt, qt = _clean(rate_test, quality_test)
    dropped = ""
    if on_front:
        fa, ft = front(la, qa), front(lt, qt)
        gone = {"anchor": len(la) - len(fa), "test": len(lt) - len(ft)}
        la, qa, lt, qt = la[fa], qa[fa], lt[ft], qt[ft]
        dropped = "; ".join(f"{k}: {v} dominated point{'s' * (v > 1)} left out"
                            for k, v in gone.items() if v)
    for name, lr, q in (("anchor", la, qa), ("test", lt, qt)):
        if not _monotone(lr, q):
            # log-rate as a function of quality does not exist: a fit through such points
            # can swing to any value (Bjontegaard assumes quality rises with rate)
            return None, (f"{name} quality does not rise with rate; compare the rate ratio at "
                          "matched quality instead")
    rng = _shared(qa, qt)
    if rng is None:
        if len(np.unique(qa)) < 2 or len(np.unique(qt)) < 2:
            return None, "no overlap in quality: a curve has fewer than 2 distinct values"
        return None, (f"no overlap in quality: anchor {qa.min():.4g}..{qa.max():.4g}, "
                      f"test {qt.min():.4g}..{qt.max():.4g}")
    lo, hi = rng
    ia = _integral(qa, la, lo, hi, method)
    it = _integral(qt, lt, lo, hi, method)
    if ia is None or it is None:
        return None, "too few distinct quality values (need 2 per curve)"
    note = f"quality range {lo:.4g}..{hi:.4g}" + (f" ({dropped})" if dropped else "")
    return float((10 ** ((it - ia) / (hi - lo)) - 1) * 100), note


def bd_quality(rate_anchor: Sequence[float], quality_anchor: Sequence[float],
               rate_test: Sequence[float], quality_test: Sequence[float], *,
               method: Method = "cubic") -> BDResult:
    """Bjontegaard delta quality (BD-PSNR when quality is PSNR) of test vs anchor: the mean
    quality difference over the shared log-rate range (positive: test is better)."""
    la, qa = _clean(rate_anchor, quality_anchor)
    lt, qt = _clean(rate_test, quality_test)
    rng = _shared(la, lt)
    if rng is None:
        if len(np.unique(la)) < 2 or len(np.unique(lt)) < 2:
            return None, "no overlap in rate: a curve has fewer than 2 distinct rates"
        return None, "no overlap in rate"
    lo, hi = rng
    ia = _integral(la, qa, lo, hi, method)
    it = _integral(lt, qt, lo, hi, method)
    if ia is None or it is None:
        return None, "too few distinct rates (need 2 per curve)"
    return float((it - ia) / (hi - lo)), f"rate range {10 ** lo:.4g}..{10 ** hi:.4g}"


# -- the same on benchmark points (dicts), as bench tasks keeps them ---------------------------

def _points(points: Sequence[dict[str, Any]], key: str,
            rate_key: str) -> tuple[list[float], list[float]]:
    ps = [p for p in points if p.get(rate_key) is not None and p.get(key) is not None]
    return [float(p[rate_key]) for p in ps], [float(p[key]) for p in ps]


def overlap_points(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], key: str,
                   rate_key: str = "kbps") -> tuple[float, float] | None:
    """The ``key`` interval both point lists span (rate > 0 only), or None."""
    (ra, qa), (rb, qb) = _points(a, key, rate_key), _points(b, key, rate_key)
    _, qa_ = _clean(ra, qa)
    _, qb_ = _clean(rb, qb)
    return _shared(qa_, qb_)


def bd_rate_points(test: Sequence[dict[str, Any]], anchor: Sequence[dict[str, Any]], key: str,
                   rate_key: str = "kbps", method: Method = "cubic",
                   on_front: bool = False) -> BDResult:
    """:func:`bd_rate` of point dicts (``rate_key`` and ``key`` in each); note names ``key``."""
    (rt, qt), (ra, qa) = _points(test, key, rate_key), _points(anchor, key, rate_key)
    value, note = bd_rate(ra, qa, rt, qt, method=method, on_front=on_front)
    return value, note.replace("quality", key, 1)


def rate_ratios(test: Sequence[dict[str, Any]], anchor: Sequence[dict[str, Any]],
                key: str = "det_map50", rate_key: str = "kbps") -> dict[str, Any]:
    """Rate of ``test`` over rate of ``anchor`` at equal score, at each ``test`` point whose score
    lies in the anchor's range (anchor log-rate interpolated linearly in score). The anchor is
    taken on its rate-score :func:`front`, as the BD-rate takes it: a point that costs more for
    no higher score (task scores are noisy) would make a lower score look dearer than it is.
    No extrapolation."""
    ra, sa = _points(anchor, key, rate_key)
    la, sa_ = _clean(ra, sa)
    keep = front(la, sa_)
    if len(keep) < 2:
        return {"overlap": False, "note": "anchor has fewer than 2 points on its front"}
    xs, ys = sa_[keep], la[keep]  # score rises with rate along the front
    out = []
    for p in test:
        s, rate = p.get(key), p.get(rate_key)
        if s is None or rate is None or rate <= 0 or not xs[0] <= s <= xs[-1]:
            continue
        anchor_rate = 10 ** float(np.interp(s, xs, ys))
        out.append({"point": p.get("point"), key: round(s, 4), rate_key: rate,
                    f"anchor_{rate_key}": round(anchor_rate, 2),
                    "ratio": round(rate / anchor_rate, 4)})
    if not out:
        return {"overlap": False, "note": f"no point of ours lies in the anchor's {key} range "
                f"{xs[0]:.3f}..{xs[-1]:.3f}; no extrapolated comparison"}
    return {"overlap": True, "points": out,
            "median_ratio": round(float(np.median([o["ratio"] for o in out])), 4),
            "anchor_points_off_front": int(len(sa_) - len(keep))}


# -- distortion -------------------------------------------------------------------------------

def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error over every sample of two same-shaped images."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def db(err: float, peak: float = 1.0, max_db: float = MAX_DB) -> float:
    """10 log10(peak / err), capped at ``max_db`` (err 0 would be infinite)."""
    if err <= 0:
        return max_db
    return min(max_db, 10.0 * math.log10(peak / err))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0,
         max_db: float = MAX_DB) -> float:
    """PSNR in dB over all samples (all channels together); identical images give ``max_db``."""
    return db(mse(a, b), data_range ** 2, max_db)


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray, data_range: float = 255.0,
                max_db: float = MAX_DB) -> float | None:
    """PSNR over the pixels where ``mask`` (H x W) is true; None for an empty mask."""
    if a.shape != b.shape or mask.shape != a.shape[:2]:
        raise ValueError(f"shapes differ: {a.shape}, {b.shape}, mask {mask.shape}")
    if not mask.any():
        return None
    d = a[mask].astype(np.float64) - b[mask].astype(np.float64)
    return db(float(np.mean(d * d)), data_range ** 2, max_db)


def msssim_db(value: float, max_db: float = MAX_DB) -> float:
    """MS-SSIM as -10 log10(1 - MS-SSIM): the scale rate-distortion curves and BD-rates use."""
    return db(1.0 - value, 1.0, max_db)


def _gaussian(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _valid_blur(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter keeping only the fully covered ("valid") outputs."""
    import cv2

    r = len(g) // 2
    out = cv2.sepFilter2D(img, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
    h, w = img.shape
    return out[r:h - r, r:w - r] if len(g) > 1 else out


def _ssim_terms(x: np.ndarray, y: np.ndarray, g: np.ndarray, c1: float,
                c2: float) -> tuple[float, float]:
    """Mean luminance term and mean contrast-structure term of SSIM on one channel."""
    mx, my = _valid_blur(x, g), _valid_blur(y, g)
    sxx = _valid_blur(x * x, g) - mx * mx
    syy = _valid_blur(y * y, g) - my * my
    sxy = _valid_blur(x * y, g) - mx * my
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return float(lum.mean()), float(cs.mean())


def _halve(img: np.ndarray) -> np.ndarray:
    """2 x 2 average and subsample (an odd last row / column is dropped)."""
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    v = img[:h, :w]
    return 0.25 * (v[0::2, 0::2] + v[1::2, 0::2] + v[0::2, 1::2] + v[1::2, 1::2])


def ms_ssim_scales(height: int, width: int, window: int = SSIM_WINDOW) -> int:
    """How many scales (at most 5) an image of this size gets: the coarsest must still hold
    one window, so all 5 need a short side of at least 11 * 16 = 176 px."""
    side = min(height, width)
    n = 1
    while n < len(MS_SSIM_WEIGHTS) and side // 2 ** n >= window:
        n += 1
    return n


def ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Multi-scale SSIM of two same-shaped images (H x W or H x W x C), in [0, 1].

    Each channel gets its own MS-SSIM and the channels are averaged. Images with a short side
    under 176 px use fewer scales (as many as hold an 11 px window at the coarsest one) with the
    standard weights of those scales renormalised to sum 1; under 11 px a single scale with the
    window shrunk to the image. Negative contrast-structure means are clipped to 0 (as
    pytorch-msssim does) so the weighted product stays real."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    h, w = a.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"empty image {a.shape}")
    size = SSIM_WINDOW
    if min(h, w) < SSIM_WINDOW:
        size = min(h, w) if min(h, w) % 2 else min(h, w) - 1
    g = _gaussian(size, SSIM_SIGMA)
    n = ms_ssim_scales(h, w, size)
    weights = np.array(MS_SSIM_WEIGHTS[:n])
    weights /= weights.sum()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    values = []
    for c in range(a.shape[2]):
        x = a[:, :, c].astype(np.float64)
        y = b[:, :, c].astype(np.float64)
        total = 1.0
        for s in range(n):
            lum, cs = _ssim_terms(x, y, g, c1, c2)
            term = max(cs, 0.0) if s < n - 1 else max(lum * cs, 0.0)
            total *= term ** weights[s]
            if s < n - 1:
                x, y = _halve(x), _halve(y)
        values.append(total)
    return float(np.mean(values))
