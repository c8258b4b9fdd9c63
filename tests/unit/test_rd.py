"""sdk.rd: Bjontegaard deltas on a published example and their properties; PSNR and MS-SSIM."""

from __future__ import annotations

import numpy as np
import pytest
from discover.sdk.rd import (
    bd_quality,
    bd_rate,
    bd_rate_points,
    masked_psnr,
    ms_ssim,
    ms_ssim_scales,
    msssim_db,
    psnr,
    rate_ratios,
)

# x264 and x265 on the same sequence ("evil"), four rate points each, in Mbps and dB
X264_RATE = [9.525, 14.270, 19.113, 24.393]
X264_PSNR = [37.73, 39.07, 40.07, 40.95]
X265_RATE = [8.914, 13.330, 17.880, 22.990]
X265_PSNR = [37.02, 38.37, 39.42, 40.35]

# "Test 1" of the FAU-LMS bjontegaard package's README / example_usage.py (libx265 presets)
FAU_RATE_ANCHOR = [9487.76, 4593.60, 2486.44, 1358.24]
FAU_PSNR_ANCHOR = [40.037, 38.615, 36.845, 34.851]
FAU_RATE_TEST = [9787.80, 4469.00, 2451.52, 1356.24]
FAU_PSNR_TEST = [40.121, 38.651, 36.970, 34.987]


def test_bd_rate_matches_published_example() -> None:
    """Published reference: "How to compute BD-Rate?", videonerd.website
    (https://videonerd.website/how-compute-bd-rate), x264 vs x265 on the 'evil' sequence with
    the VCEG-M33 cubic fit of github.com/Anserw/Bjontegaard_metric:
    ``BD_RATE(ratesx265, psnrx265, ratesx264, psnrx264)`` prints ``-12.098`` (anchor x265,
    test x264). Our cubic fit must give the same to the published three decimals."""
    value, note = bd_rate(X265_RATE, X265_PSNR, X264_RATE, X264_PSNR)
    assert value is not None
    assert round(value, 3) == -12.098
    assert "37.73..40.35" in note  # the overlapping PSNR range, never extrapolated


def test_bd_rate_reversed_is_consistent() -> None:
    fwd, _ = bd_rate(X265_RATE, X265_PSNR, X264_RATE, X264_PSNR)
    back, _ = bd_rate(X264_RATE, X264_PSNR, X265_RATE, X265_PSNR)
    assert fwd is not None and back is not None
    # exp(mean log ratio) inverts exactly
    assert (1 + fwd / 100) * (1 + back / 100) == pytest.approx(1.0, abs=1e-12)


def test_pchip_matches_an_independent_implementation() -> None:
    """The piecewise cubic Hermite variant (JCT-VC CTC sheets) against SciPy's
    PchipInterpolator integrated over the same range, on the FAU-LMS example data."""
    interpolate = pytest.importorskip("scipy.interpolate")
    for ra, qa, rt, qt in ((FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR, FAU_RATE_TEST, FAU_PSNR_TEST),
                           (X265_RATE, X265_PSNR, X264_RATE, X264_PSNR)):
        ours, _ = bd_rate(ra, qa, rt, qt, method="pchip")
        lo, hi = max(min(qa), min(qt)), min(max(qa), max(qt))
        ints = []
        for r, q in ((ra, qa), (rt, qt)):
            order = np.argsort(q)
            f = interpolate.PchipInterpolator(np.asarray(q)[order], np.log10(r)[order])
            ints.append(f.integrate(lo, hi))
        ref = (10 ** ((ints[1] - ints[0]) / (hi - lo)) - 1) * 100
        assert ours == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_identical_curves_give_zero(method: str) -> None:
    v, _ = bd_rate(FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR, FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR,
                   method=method)
    assert v == pytest.approx(0.0, abs=1e-9)
    d, _ = bd_quality(FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR, FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR,
                      method=method)
    assert d == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["cubic", "pchip"])
@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_half_rate_everywhere_is_minus_50(method: str, n: int) -> None:
    rates = list(np.geomspace(0.05, 2.0, n))
    quality = list(np.linspace(28.0, 38.0, n) + np.sin(np.arange(n)))  # not a straight line
    half = [r / 2 for r in rates]
    v, _ = bd_rate(rates, quality, half, quality, method=method)
    assert v == pytest.approx(-50.0, abs=1e-9)
    v, _ = bd_rate(half, quality, rates, quality, method=method)
    assert v == pytest.approx(100.0, abs=1e-9)


def test_bd_quality_of_a_constant_gain() -> None:
    d, note = bd_quality(FAU_RATE_ANCHOR, FAU_PSNR_ANCHOR, FAU_RATE_ANCHOR,
                         [p + 0.5 for p in FAU_PSNR_ANCHOR])
    assert d == pytest.approx(0.5, abs=1e-9) and "rate range" in note


def test_no_overlap_gives_none_with_reason() -> None:
    v, why = bd_rate([1, 2, 4], [30, 32, 34], [1, 2, 4], [35, 37, 39])
    assert v is None and "no overlap" in why
    v, why = bd_quality([1, 2], [30, 32], [5, 9], [30, 32])
    assert v is None and "no overlap" in why
    v, why = bd_rate([1], [30], [1, 2], [30, 31])  # one point is no curve
    assert v is None and "no overlap" in why
    # points with no rate (0) or no value (inf) are left out, not fitted
    v, _ = bd_rate([0, 1, 2, 4], [20, 30, 32, 34], [1, 2, 4, 8], [30, 32, 34, float("inf")])
    assert v == pytest.approx(0.0, abs=1e-9)


def test_points_helpers_name_the_key() -> None:
    a = [{"point": f"p{i}", "kbps": k, "det_map50": s}
         for i, (k, s) in enumerate([(100, 0.5), (200, 0.6), (400, 0.7)])]
    b = [{**p, "kbps": p["kbps"] / 2} for p in a]
    v, note = bd_rate_points(b, a, "det_map50")
    assert v == pytest.approx(-50.0) and note.startswith("det_map50 range")
    r = rate_ratios(b, a)
    assert r["overlap"] and r["median_ratio"] == pytest.approx(0.5)


def test_rate_ratios_take_the_anchor_on_its_front() -> None:
    """An anchor point that costs more for a lower score (noise: x265 CRF 23 scored below
    CRF 30 on held-out frames) does not make a score in between look dearer: the ratio is
    read off the points nobody would skip, as the BD-rate reads them."""
    anchor = [{"point": p, "kbps": k, "det_map50": s} for p, k, s in
              [("c37", 100, 0.90), ("c30", 200, 0.98), ("c23", 800, 0.96)]]
    test = [{"point": "q", "kbps": 150, "det_map50": 0.94}]
    r = rate_ratios(test, anchor)
    # on the front: halfway from 0.90 to 0.98 is halfway in log-rate from 100 to 200
    assert r["points"][0]["anchor_kbps"] == pytest.approx(100 * 2 ** 0.5, abs=0.01)
    assert r["points"][0]["ratio"] == pytest.approx(150 / (100 * 2 ** 0.5), abs=1e-3)
    assert r["anchor_points_off_front"] == 1


# -- distortion -------------------------------------------------------------------------------

def _image(h: int = 192, w: int = 256, seed: int = 0) -> np.ndarray:
    """A smooth colour image with some texture (MS-SSIM of pure noise says little)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 60 * np.sin(xx / 9.0 + c) * np.cos(yy / 13.0 - c) for c in range(3)],
                    axis=2)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def _noisy(img: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def test_psnr() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # MSE = 255^2 / 48
    assert psnr(a, b) == pytest.approx(10 * np.log10(48), abs=1e-9)
    assert psnr(a, a) == 100.0  # capped, JSON has no infinity
    mask = np.zeros((4, 4), bool)
    mask[1:, 1:] = True
    assert masked_psnr(a, b, mask) == 100.0  # the error lies outside the mask
    mask[0, 0] = True
    assert masked_psnr(a, b, mask) == pytest.approx(10 * np.log10(30), abs=1e-9)
    assert masked_psnr(a, b, np.zeros((4, 4), bool)) is None


def test_ms_ssim_identity_noise_symmetry() -> None:
    x = _image()
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    values = [ms_ssim(x, _noisy(x, s)) for s in (2, 8, 20, 50)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), values
    assert 0.0 < values[-1] < values[0] < 1.0
    y = _noisy(x, 15)
    assert ms_ssim(x, y) == pytest.approx(ms_ssim(y, x), abs=1e-12)
    # grey (2-D) input works and equals the one-channel result
    g = x[:, :, 0]
    assert ms_ssim(g, y[:, :, 0]) == pytest.approx(ms_ssim(g[:, :, None], y[:, :, :1]))
    assert msssim_db(0.99) == pytest.approx(20.0) and msssim_db(1.0) == 100.0


def test_ms_ssim_scales_and_small_images() -> None:
    assert ms_ssim_scales(176, 300) == 5
    assert ms_ssim_scales(175, 300) == 4
    assert ms_ssim_scales(128, 192) == 4
    assert ms_ssim_scales(30, 30) == 2
    assert ms_ssim_scales(12, 40) == 1
    for h, w in ((128, 192), (40, 60), (16, 16), (7, 9), (1, 5)):
        x = _image(h, w)
        assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12), (h, w)
        v = ms_ssim(x, _noisy(x, 25))
        assert 0.0 <= v < 1.0, (h, w, v)


def test_ms_ssim_known_structure() -> None:
    """A constant offset leaves contrast and structure intact: only the coarsest scale's
    luminance term drops, so MS-SSIM stays close to 1; blurring hurts much more."""
    import cv2

    x = _image(256, 256)
    brighter = np.clip(x.astype(np.int16) + 10, 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(x, (0, 0), 3)
    assert ms_ssim(x, brighter) > 0.98
    assert ms_ssim(x, blurred) < ms_ssim(x, brighter)
    with pytest.raises(ValueError):
        ms_ssim(x, x[:100])


def test_ms_ssim_agrees_with_pytorch_msssim() -> None:
    """Cross-check against pytorch-msssim (the implementation CompressAI's evaluation uses),
    where it is installed, on sizes whose every scale halves evenly."""
    pm = pytest.importorskip("pytorch_msssim")
    torch = pytest.importorskip("torch")
    x = _image(256, 384)
    for sigma in (5, 20, 60):
        y = _noisy(x, sigma)
        ref = pm.ms_ssim(torch.from_numpy(x).permute(2, 0, 1)[None].double(),
                         torch.from_numpy(y).permute(2, 0, 1)[None].double(),
                         data_range=255).item()
        assert ms_ssim(x, y) == pytest.approx(ref, abs=1e-4)


def test_bd_rate_refuses_a_curve_whose_quality_falls_with_rate():
    """A non-monotone score curve (measured: ours' det mAP 0.880 -> 0.855 as the rate rose) has
    no inverse; the cubic through it gave +205917 %. It must give no number, with a reason."""
    anchor = ([18.7, 70.0, 200.0, 703.0], [0.837, 0.93, 0.96, 0.992])
    test = ([566.0, 800.0, 1100.0, 1436.0], [0.880, 0.87, 0.86, 0.855])
    value, note = bd_rate(*anchor, *test)
    assert value is None and "does not rise" in note


def test_front_drops_points_that_cost_more_for_less():
    from discover.sdk.rd import front

    lr = np.log10([100.0, 200.0, 300.0, 400.0, 400.0, 500.0])
    q = np.array([0.5, 0.7, 0.65, 0.8, 0.75, 0.8])
    assert front(lr, q).tolist() == [0, 1, 3]


def test_bd_rate_on_front_equals_bd_rate_without_the_dominated_point():
    from discover.sdk.rd import bd_rate

    anchor_r, anchor_q = [100, 200, 400, 800], [0.5, 0.6, 0.7, 0.8]
    test_r, test_q = [60, 120, 180, 240, 480], [0.5, 0.6, 0.58, 0.7, 0.8]  # 180 is dominated
    strict, why = bd_rate(anchor_r, anchor_q, test_r, test_q)
    assert strict is None and "does not rise" in why
    value, note = bd_rate(anchor_r, anchor_q, test_r, test_q, on_front=True)
    clean, _ = bd_rate(anchor_r, anchor_q, [60, 120, 240, 480], [0.5, 0.6, 0.7, 0.8])
    assert value == pytest.approx(clean) and value < 0
    assert "test: 1 dominated point left out" in note
