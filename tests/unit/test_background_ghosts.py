"""The background composer shows a moving object once: the background it pastes the current
regions on is made of rest pixels outside the regions of the frame each rest came with, and
with a whole-frame machine view (video codec) the machine view shows wherever the scene
changed, so an object no region holds cannot show twice either."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from discover.sdk.regions import Region
from discover.sink.composers import COMPOSERS
from discover.sink.composers.background import changed_mask, fill_holes

H, W, SIZE = 96, 160, 16
RED = np.array([0, 0, 255], np.uint8)


def scene(x: int) -> tuple[np.ndarray, Region]:
    """A static textured background (no pure red) with a red square at column ``x``."""
    rng = np.random.default_rng(7)
    img = rng.integers(0, 200, (H, W, 3), dtype=np.uint8)
    img[..., 2] = np.minimum(img[..., 2], 120)  # keep the texture far from the square's red
    img[40:40 + SIZE, x:x + SIZE] = RED
    box = (x - 4, 36, x + SIZE + 4, 40 + SIZE + 4)
    return img, Region(rid=0, box=box, label="person", score=0.9, tasks=("detection",))


def decoded(img: np.ndarray, region: Region, rest: bool) -> dict:
    x0, y0, x1, y1 = region.box
    return {"x_hat": img if rest else np.zeros_like(img), "has_rest": rest,
            "region_pixels": {region.rid: img[y0:y1, x0:x1].copy()}}


def red_blobs(img: np.ndarray) -> tuple[int, int]:
    """(red pixels, red connected components) of a composed frame."""
    import cv2

    red = np.all(img == RED, axis=2).astype(np.uint8)
    n, _ = cv2.connectedComponents(red)
    return int(red.sum()), n - 1


@pytest.mark.parametrize("first_rest_x", [10, 130])
def test_moving_object_appears_once(first_rest_x: int) -> None:
    bg = COMPOSERS.create("background")
    # rest at frame 0 with the square at first_rest_x, then it walks right (or wraps left)
    xs = [first_rest_x] + [(first_rest_x + 12 * k) % (W - SIZE - 8) + 4 for k in range(1, 9)]
    for i, x in enumerate(xs):
        img, region = scene(x)
        out = bg.compose(decoded(img, region, rest=i in (0, 5)), {"frame": i, "regions": [region]})
        pixels, blobs = red_blobs(out)
        assert (pixels, blobs) == (SIZE * SIZE, 1), f"frame {i}: square at {x} shown {blobs}x"
        np.testing.assert_array_equal(out[40:40 + SIZE, x:x + SIZE], img[40:40 + SIZE, x:x + SIZE])


def test_background_outside_regions_is_the_latest_rest() -> None:
    bg = COMPOSERS.create("background")
    img0, r0 = scene(10)
    bg.compose(decoded(img0, r0, True), {"frame": 0, "regions": [r0]})
    img1, r1 = scene(100)
    img1[:8] = 255  # the view outside the regions changed at the second rest
    bg.compose(decoded(img1, r1, True), {"frame": 1, "regions": [r1]})
    img2, r2 = scene(60)
    out = bg.compose(decoded(img2, r2, False), {"frame": 2, "regions": [r2]})
    assert (out[:8] == 255).all()
    # where the first rest had its square, the second rest's clean pixels are shown
    np.testing.assert_array_equal(out[40:40 + SIZE, 10:10 + SIZE], img1[40:40 + SIZE, 10:10 + SIZE])


def test_fill_holes_uses_the_surrounding_colours() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (200, 10, 10)
    img[:, 32:] = (10, 10, 200)
    holes = np.zeros((64, 64), bool)
    holes[20:40, 8:24] = True
    img[holes] = RED
    out = fill_holes(img, holes)
    np.testing.assert_array_equal(out[~holes], img[~holes])
    assert np.abs(out[holes].astype(int) - (200, 10, 10)).max() < 12


# -- a stream codec's whole-frame machine view (video codec): objects outside every region ----

VIDEO_META = SimpleNamespace(codec={"type": "video"})  # what the sink has from the stream meta


def machine_view(img: np.ndarray, seed: int) -> np.ndarray:
    """``img`` as a lossy codec returns it: a few grey levels of noise everywhere."""
    noise = np.random.default_rng(seed).integers(-3, 4, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def reddish(img: np.ndarray) -> tuple[int, int]:
    """(pixels, connected components) that look like the red square (noise tolerant)."""
    import cv2

    red = ((img[..., 2] > 200) & (img[..., 1] < 60) & (img[..., 0] < 60)).astype(np.uint8)
    n, _ = cv2.connectedComponents(red)
    return int(red.sum()), n - 1


def whole_frame(img: np.ndarray, rest: bool, seed: int) -> dict:
    """A video codec's Decoded: the rest (rest frames) or the task stream, both whole frames."""
    return {"x_hat": machine_view(img, seed), "has_rest": rest, "region_pixels": {},
            "whole_frame": not rest}


@pytest.mark.parametrize("path", ["moves", "leaves"])
def test_object_the_grounder_missed_shows_once(path: str) -> None:
    """The square is in no region (the grounder missed it); the rest at frame 0 holds it at
    x=10. Later it walks away or leaves the view: the old place shows the background."""
    bg = COMPOSERS.create("background")
    xs = [10, 40, 70, 100, 130] if path == "moves" else [10, None, None, None]
    for i, x in enumerate(xs):
        img, _ = scene(x if x is not None else 0)
        if x is None:
            img = scene(0)[0]
            img[40:40 + SIZE, 0:SIZE] = scene(W)[0][40:40 + SIZE, 0:SIZE]  # square gone
        out = bg.compose(whole_frame(img, i == 0, i), {"frame": i, "regions": [],
                                                      "meta": VIDEO_META})
        pixels, blobs = reddish(out)
        want = 1 if x is not None else 0
        assert blobs == want, f"frame {i}: the square shows {blobs} times"
        assert not reddish(out[40:40 + SIZE, 10:10 + SIZE])[0] or x == 10, \
            f"frame {i}: a ghost at the rest's old place"


def test_static_background_comes_from_the_rest_where_nothing_changed() -> None:
    """Between rests, where the machine view only differs by coding noise, the (better) rest
    background is shown; the moving object comes from the machine view."""
    bg = COMPOSERS.create("background")
    img0, r0 = scene(10)
    rest = machine_view(img0, 0)
    bg.compose({"x_hat": rest, "has_rest": True, "region_pixels": {}},
               {"frame": 0, "regions": [r0], "meta": VIDEO_META})
    img1, r1 = scene(100)
    view = machine_view(img1, 1)
    out = bg.compose({"x_hat": view, "has_rest": False, "region_pixels": {}, "whole_frame": True},
                     {"frame": 1, "regions": [r1], "meta": VIDEO_META})
    np.testing.assert_array_equal(out[:, 48:80], rest[:, 48:80])  # static: from the rest
    np.testing.assert_array_equal(out[40:56, 100:116], view[40:56, 100:116])
    assert reddish(out) == (SIZE * SIZE, 1)


def test_region_codecs_keep_pasting_crops() -> None:
    """Without a whole-frame machine view (a region codec's x_hat is its own background with
    crops) the composer pastes crops on the clean background, as before."""
    bg = COMPOSERS.create("background")
    img0, r0 = scene(10)
    bg.compose(decoded(img0, r0, True), {"frame": 0, "regions": [r0],
                                         "meta": SimpleNamespace(codec={"type": "classical"})})
    img1, r1 = scene(100)
    out = bg.compose(decoded(img1, r1, False), {"frame": 1, "regions": [r1],
                                                "meta": SimpleNamespace(codec={"type": "classical"})})
    assert red_blobs(out) == (SIZE * SIZE, 1)  # x_hat (zeros) was never shown


def test_changed_mask_hysteresis() -> None:
    a = np.full((64, 64, 3), 100, np.uint8)
    assert not changed_mask(a, a, 8, 12, 6, 0).any()
    b = a.copy()
    b[8:16, 8:16] = 140  # a strong block
    b[8:16, 16:24] = 108  # a faint block touching it: joined
    b[40:48, 40:48] = 108  # a faint block alone: noise, left out
    m = changed_mask(b, a, 8, 12, 6, 0)
    assert m[8:16, 8:24].all() and not m[40:48, 40:48].any()
    assert m.sum() == 2 * 64
    assert changed_mask(b, a, 8, 12, 6, 1)[0:24, 0:32].all()  # grown by one block


def test_a_task_stream_that_did_not_decode_shows_the_background() -> None:
    """The video codec's x_hat is a grey placeholder when its task stream failed: the view
    keeps the background rather than turning grey."""
    from discover.sdk.codecs.base import SubstreamError

    bg = COMPOSERS.create("background")
    img0, r0 = scene(10)
    bg.compose(whole_frame(img0, True, 0), {"frame": 0, "regions": [], "meta": VIDEO_META})
    grey = {"x_hat": np.full_like(img0, 128), "has_rest": False, "region_pixels": {},
            "errors": {SubstreamError.TASK: "task/detection: missing reference"}}
    out = bg.compose(grey, {"frame": 1, "regions": [], "meta": VIDEO_META})
    assert np.abs(out.astype(int) - img0).max() <= 3  # the rest, up to its coding noise


def test_auto_follows_what_the_codec_says_it_decoded() -> None:
    """The real codecs: the video codec's x_hat between rests is a whole decoded frame, the
    classical codec's is not; the composer shows the machine view only for the former."""
    from discover.sdk.codecs import CODECS, CodedFrame

    img, r = scene(10)
    for key, whole in (("video", True), ("classical", False)):
        codec = CODECS.create({"type": key})
        codec.start(["detection"], 10.0)
        sink = CODECS.create(codec.descriptor()["config"])
        got = sink.decompress(CodedFrame.of(codec.compress(img, [r], False), [r], (W, H)))
        assert got.whole_frame is whole, key
