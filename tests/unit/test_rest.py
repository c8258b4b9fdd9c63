"""When the edge sends rest (sdk/rest.py): periodic, on a background change, on request."""

from __future__ import annotations

import numpy as np
from discover.sdk.regions import Region
from discover.sdk.rest import RestScheduler, background_change, thumbnail

W, H = 256, 192


def scene(seed: int = 0) -> np.ndarray:
    """A textured static background, the same for every call with the same seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (H // 16, W // 16, 3), dtype=np.uint8)
    return np.kron(base, np.ones((16, 16, 1), np.uint8))


def region(box: tuple[int, int, int, int]) -> Region:
    return Region(rid=0, box=box, label="car", score=0.9, tasks=("detection",))


def test_object_inside_a_task_region_is_not_a_background_change():
    bg = scene()
    moved = bg.copy()
    moved[32:96, 64:160] = 255  # an object arrives where the task region is
    box = (64, 32, 160, 96)
    assert background_change(thumbnail(moved), thumbnail(bg), [region(box)], W, H) == 0.0
    # without the region the same pixels are a change of the right size
    share = background_change(thumbnail(moved), thumbnail(bg), [], W, H)
    assert abs(share - (64 * 96) / (W * H)) < 0.02


def test_periodic_only_without_change_trigger():
    s = RestScheduler(interval=4, on_change=0.0)
    frames = [scene() for _ in range(9)]
    assert [s.due(i, f, []) for i, f in enumerate(frames)] == [i % 4 == 0 for i in range(9)]
    assert s.reasons == {"periodic": 3}


def test_change_sends_rest_once_then_waits_for_the_next_change():
    s = RestScheduler(interval=1000, on_change=0.05, min_gap=2)
    bg, other = scene(0), scene(1)
    got = [s.due(i, f, []) for i, f in enumerate([bg, bg, bg, other, other, other, bg])]
    # frame 0 (periodic), the cut to `other`, the cut back
    assert got == [True, False, False, True, False, False, True]
    assert s.reasons == {"periodic": 1, "change": 2}


def test_min_gap_holds_back_a_change_right_after_a_rest():
    s = RestScheduler(interval=1000, on_change=0.05, min_gap=3)
    a, b, c = scene(0), scene(1), scene(2)
    got = [s.due(i, f, []) for i, f in enumerate([a, b, c, c, c])]
    assert got == [True, False, False, True, False]


def test_small_change_under_the_threshold_sends_nothing():
    s = RestScheduler(interval=1000, on_change=0.05)
    bg = scene()
    noisy = np.clip(bg.astype(int) + np.random.default_rng(3).integers(-6, 7, bg.shape),
                    0, 255).astype(np.uint8)
    assert [s.due(i, f, []) for i, f in enumerate([bg, noisy, noisy])] == [True, False, False]


def test_interval_zero_turns_rest_off_even_with_the_change_trigger():
    s = RestScheduler(interval=0, on_change=0.05)
    frames = [scene(0), scene(1), scene(2)]
    assert not any(s.due(i, f, []) for i, f in enumerate(frames))


def test_first_frame_after_a_late_start_is_a_rest():
    s = RestScheduler(interval=10, on_change=0.05)
    assert s.due(3, scene(), []) and s.reasons == {"first": 1}


def test_request_forces_the_next_frame_unless_rest_is_off():
    s = RestScheduler(interval=100, on_change=0.0)
    bg = scene()
    assert s.due(0, bg, []) and not s.due(1, bg, [])
    s.request()
    assert s.due(2, bg, []) and not s.due(3, bg, [])
    assert s.reasons == {"periodic": 1, "requested": 1}
    off = RestScheduler(interval=0, on_change=0.05)
    off.request()
    assert not any(off.due(i, bg, []) for i in range(3))
