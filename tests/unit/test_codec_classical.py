"""The classical region codec (sdk/codecs/classical.py) on real frames of the bundled clip."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np
import pytest
from discover.sdk.codecs import CODECS
from discover.sdk.codecs.classical import ClassicalCodec
from discover.sdk.errors import DiscoverError
from discover.sdk.regions import Region
from hypothesis import given, settings
from hypothesis import strategies as st

CLIP = Path(__file__).resolve().parents[2] / "sdk" / "assets" / "sample" / "street.mp4"
W, H = 768, 576
# Three pedestrians (placed by eye on frame 0, padded) and two corner patches; no overlaps.
BOXES = [(496, 152, 536, 240), (632, 232, 688, 328), (240, 216, 288, 312), (0, 0, 128, 96),
         (700, 500, 768, 576)]
REGIONS = [Region(i + 1, b, "person", 0.9, ("detection",)) for i, b in enumerate(BOXES)]


@pytest.fixture(scope="module")
def frames() -> dict[int, np.ndarray]:
    """Frames 0, 30 and 59 of the clip (BGR uint8)."""
    want = {0, 30, 59}
    out = {}
    with av.open(str(CLIP)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in want:
                out[i] = f.to_ndarray(format="bgr24")
            if i >= max(want):
                break
    assert all(out[i].shape == (H, W, 3) and out[i].dtype == np.uint8 for i in out)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def crop(img: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


def codec(**cfg) -> ClassicalCodec:
    return CODECS.create({"type": "classical", **cfg})


def decode(c: ClassicalCodec, coded: dict, *, regions=None, rest=..., side=None, table=REGIONS):
    return c.decompress({
        "side": coded["side"] if side is None else side,
        "regions": coded["regions"] if regions is None else regions,
        "rest": coded["rest"] if rest is ... else rest,
        "table": table, "size": (W, H),
    })


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
@pytest.mark.parametrize("index", [0, 30, 59])
def test_regions_are_faithful_at_quality_75(frames, fmt, index):
    frame = frames[index]
    c = codec(format=fmt, quality=75)
    coded = c.compress(frame, REGIONS, send_rest=False)
    assert coded["rest"] is None
    assert set(coded["regions"]) == {r.rid for r in REGIONS}
    out = decode(c, coded)
    assert out["x_hat"].shape == (H, W, 3) and out["x_hat"].dtype == np.uint8
    assert out["errors"] == {} and out["has_rest"] is False
    for r in REGIONS:
        px = out["region_pixels"][r.rid]
        assert px.shape == crop(frame, r.box).shape
        assert psnr(px, crop(frame, r.box)) > 30
        assert np.array_equal(crop(out["x_hat"], r.box), px)  # pasted where it belongs


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_image_format_is_the_configured_one(frames, fmt):
    coded = codec(format=fmt).compress(frames[0], REGIONS[:1], send_rest=True)
    magic = (lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP") if fmt == "webp" else (
        lambda b: b[:2] == b"\xff\xd8")
    assert magic(coded["side"]) and magic(coded["rest"]) and magic(coded["regions"][1])


def test_higher_quality_costs_more_and_looks_better(frames):
    frame = frames[30]
    low, high = codec(quality=20), codec(quality=90)
    cl, ch = low.compress(frame, REGIONS, False), high.compress(frame, REGIONS, False)
    assert sum(map(len, ch["regions"].values())) > sum(map(len, cl["regions"].values()))
    pl = np.mean([psnr(decode(low, cl)["region_pixels"][r.rid], crop(frame, r.box)) for r in REGIONS])
    ph = np.mean([psnr(decode(high, ch)["region_pixels"][r.rid], crop(frame, r.box)) for r in REGIONS])
    assert ph > pl + 2


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_rest_gives_a_good_whole_frame_and_beats_the_thumbnail(frames, fmt):
    frame = frames[59]
    c = codec(format=fmt)
    coded = c.compress(frame, REGIONS, send_rest=True)
    with_rest = decode(c, coded)
    without = decode(c, coded, rest=None)
    assert with_rest["has_rest"] is True and without["has_rest"] is False
    assert with_rest["errors"] == {} == without["errors"]
    assert psnr(with_rest["x_hat"], frame) > 30
    # outside the regions only the background speaks: rest must be clearly better
    outside = np.ones((H, W), bool)
    for r in REGIONS:
        x0, y0, x1, y1 = r.box
        outside[y0:y1, x0:x1] = False
    assert psnr(with_rest["x_hat"][outside], frame[outside]) > psnr(
        without["x_hat"][outside], frame[outside]) + 5
    # the thumbnail background is still a blurry picture of this frame, not noise
    assert psnr(without["background"], frame) > 15
    # with rest the background is the rest image itself
    assert psnr(with_rest["background"], frame) > 30


def test_region_independence_any_subset(frames):
    frame = frames[30]
    c = codec()
    coded = c.compress(frame, REGIONS, send_rest=False)
    full = decode(c, coded)
    none = decode(c, coded, regions={})
    assert none["region_pixels"] == {} and none["errors"] == {}
    rids = [r.rid for r in REGIONS]
    boxes = {r.rid: r.box for r in REGIONS}
    for k in range(len(rids) + 1):
        for subset in itertools.combinations(rids, k):
            out = decode(c, coded, regions={rid: coded["regions"][rid] for rid in subset})
            assert set(out["region_pixels"]) == set(subset) and out["errors"] == {}
            for rid in subset:
                assert np.array_equal(out["region_pixels"][rid], full["region_pixels"][rid])
                assert np.array_equal(crop(out["x_hat"], boxes[rid]), crop(full["x_hat"], boxes[rid]))
            for rid in set(rids) - set(subset):  # missing regions fall back to the background
                assert np.array_equal(crop(out["x_hat"], boxes[rid]), crop(none["x_hat"], boxes[rid]))


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],             # truncated
    lambda b: b[:-10],                      # tail cut
    lambda b: b"",                          # empty
    lambda b: b"\x00" * 16 + b[16:],        # header destroyed
    lambda b: bytes(len(b)),                # all zeros
])
def test_bad_region_payload_fails_alone(frames, fmt, damage):
    frame = frames[0]
    c = codec(format=fmt)
    coded = c.compress(frame, REGIONS, send_rest=False)
    full = decode(c, coded)
    bad_rid = REGIONS[1].rid
    payloads = dict(coded["regions"])
    payloads[bad_rid] = damage(payloads[bad_rid])
    out = decode(c, coded, regions=payloads)
    assert set(out["errors"]) == {bad_rid}
    assert bad_rid not in out["region_pixels"]
    for r in REGIONS:
        if r.rid != bad_rid:
            assert np.array_equal(out["region_pixels"][r.rid], full["region_pixels"][r.rid])
    # the failed region shows the background, not garbage
    none = decode(c, coded, regions={})
    box = REGIONS[1].box
    assert np.array_equal(crop(out["x_hat"], box), crop(none["x_hat"], box))


def test_region_not_in_table_or_wrong_size_is_an_error(frames):
    frame = frames[0]
    c = codec()
    coded = c.compress(frame, REGIONS, send_rest=False)
    # a payload for an id the table does not know
    out = decode(c, coded, regions={**coded["regions"], 999: coded["regions"][1]})
    assert set(out["errors"]) == {999} and set(out["region_pixels"]) == {r.rid for r in REGIONS}
    # a payload that decodes but not to the size of its box (swapped ids)
    swapped = {**coded["regions"], 1: coded["regions"][2], 2: coded["regions"][1]}
    out = decode(c, coded, regions=swapped)
    assert set(out["errors"]) == {1, 2}


def test_bad_side_and_bad_rest_are_reported_not_raised(frames):
    frame = frames[0]
    c = codec()
    coded = c.compress(frame, REGIONS, send_rest=True)
    out = decode(c, coded, rest=coded["rest"][:100])
    assert -1 in out["errors"] and out["has_rest"] is False
    assert psnr(out["x_hat"], frame) > 15  # fell back to the thumbnail
    out = decode(c, coded, rest=None, side=b"garbage")
    assert -2 in out["errors"]
    assert out["x_hat"].shape == (H, W, 3)
    assert set(out["region_pixels"]) == {r.rid for r in REGIONS}  # regions still decode
    # a rest of the wrong size is not taken as the background
    small = codec().compress(frame[: H // 2, : W // 2].copy(), [], send_rest=True)["rest"]
    out = decode(c, coded, rest=small)
    assert -1 in out["errors"] and out["x_hat"].shape == (H, W, 3)


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_any_box_shape_round_trips(frames, data):
    """Thin, tiny and edge-touching boxes all code and come back at their size."""
    frame = frames[30]
    regs = []
    for rid in range(1, data.draw(st.integers(1, 4)) + 1):
        x0 = data.draw(st.integers(0, W - 1))
        y0 = data.draw(st.integers(0, H - 1))
        x1 = data.draw(st.integers(x0 + 1, min(W, x0 + 200)))
        y1 = data.draw(st.integers(y0 + 1, min(H, y0 + 200)))
        regs.append(Region(rid, (x0, y0, x1, y1), "person", 1.0, ("detection",)))
    fmt = data.draw(st.sampled_from(["webp", "jpeg"]))
    c = codec(format=fmt)
    out = decode(c, c.compress(frame, regs, send_rest=False), table=regs)
    assert out["errors"] == {}
    for r in regs:
        assert out["region_pixels"][r.rid].shape == crop(frame, r.box).shape


def test_config_is_validated_and_described():
    with pytest.raises(DiscoverError, match="quality"):
        CODECS.create({"type": "classical", "quality": 0})
    with pytest.raises(DiscoverError, match="format"):
        CODECS.create({"type": "classical", "format": "png"})
    with pytest.raises(DiscoverError, match=r"unknown codec 'elic'; choose one of: .*\bclassical\b"):
        CODECS.create({"type": "elic"})
    d = codec(quality=60).descriptor()
    assert d["type"] == "classical" and d["config"]["quality"] == 60 and d["checkpoint"] is None
    # a sink can rebuild the same codec from the descriptor
    assert CODECS.create(d["config"]).config == codec(quality=60).config
