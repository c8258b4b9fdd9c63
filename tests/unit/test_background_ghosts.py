"""The background composer shows a moving object once: the background it pastes the current
regions on is made of rest pixels outside the regions of the frame each rest came with."""

from __future__ import annotations

import numpy as np
import pytest
from discover.sdk.regions import Region
from discover.sink.composers import COMPOSERS
from discover.sink.composers.background import fill_holes

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
