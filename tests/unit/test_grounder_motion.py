"""The motion grounder (sdk/grounders/motion.py) on the bundled street clip."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from discover.sdk.errors import DiscoverError
from discover.sdk.grounders import ANY_OBJECT, GROUNDERS
from discover.sdk.grounders.motion import MotionGrounder

CLIP = Path(__file__).resolve().parents[2] / "sdk" / "assets" / "sample" / "street.mp4"
W, H = 768, 576


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    with av.open(str(CLIP)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(frames) == 100 and frames[0].shape == (H, W, 3)
    return frames


@pytest.fixture(scope="module")
def clip_boxes(clip) -> list[list]:
    g = GROUNDERS.create("motion")
    return [g.ground(f, ["person"]) for f in clip]


def test_first_frame_gives_nothing(clip_boxes):
    assert clip_boxes[0] == []


def test_finds_the_moving_pedestrians(clip_boxes):
    after = clip_boxes[10:]
    with_two = sum(len(d) >= 2 for d in after)
    assert with_two >= 0.8 * len(after)
    # pedestrians are small in this wide shot: no box covers a large part of the frame
    for dets in after:
        for d in dets:
            x0, y0, x1, y1 = d.box
            assert (x1 - x0) * (y1 - y0) < 0.15 * W * H


def test_boxes_are_inside_the_frame_and_well_formed(clip_boxes):
    for dets in clip_boxes:
        for d in dets:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            assert d.label == ANY_OBJECT
            assert 0.5 <= d.score <= 1.0


def test_boxes_sit_on_what_actually_changed(clip, clip_boxes):
    """Checked independently of MOG2: the frame difference inside the boxes is far above the
    difference outside them."""
    ratios = []
    for i in range(12, 100, 4):
        diff = np.abs(clip[i].astype(np.int16) - clip[i - 3].astype(np.int16)).sum(axis=2)
        inside = np.zeros((H, W), bool)
        for d in clip_boxes[i]:
            x0, y0, x1, y1 = (int(v) for v in d.box)
            inside[y0:y1, x0:x1] = True
        if inside.any():
            ratios.append(diff[inside].mean() / max(diff[~inside].mean(), 1e-6))
    assert len(ratios) >= 20
    assert np.median(ratios) > 3


def test_static_scene_gives_no_boxes(clip):
    g = GROUNDERS.create("motion")
    still = clip[40]
    out = [g.ground(still.copy(), ["person"]) for _ in range(25)]
    assert all(d == [] for d in out[5:])


def test_object_moving_over_a_static_scene_is_boxed(clip):
    g = GROUNDERS.create("motion")
    still = clip[40]
    for _ in range(15):
        g.ground(still, [])
    hits = 0
    for step in range(10):
        frame = still.copy()
        x0, y0 = 100 + 20 * step, 380
        box = (x0, y0, x0 + 40, y0 + 80)
        frame[y0 : y0 + 80, x0 : x0 + 40] = (20, 200, 240)  # a bright block sliding right
        dets = g.ground(frame, [])
        best = max((_iou(d.box, box) for d in dets), default=0.0)
        hits += best > 0.4
    assert hits >= 8


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_min_area_and_min_score_filter(clip):
    loose = GROUNDERS.create("motion")
    strict = GROUNDERS.create({"type": "motion", "min_area": 0.05})
    picky = GROUNDERS.create({"type": "motion", "min_score": 1.0})
    n_loose = n_strict = n_picky = 0
    for f in clip[:40]:
        n_loose += len(loose.ground(f, []))
        n_strict += len(strict.ground(f, []))
        n_picky += len(picky.ground(f, []))
    assert n_loose > 40
    assert n_strict < n_loose / 4  # pedestrians are far below 5% of the frame
    assert n_picky < n_loose / 4   # a blob never fills its box completely, rarely


def test_config_errors_are_discover_errors():
    assert isinstance(GROUNDERS.create("motion"), MotionGrounder)
    with pytest.raises(DiscoverError, match="scale"):
        GROUNDERS.create({"type": "motion", "scale": 0})
    with pytest.raises(DiscoverError, match="bogus"):
        GROUNDERS.create({"type": "motion", "bogus": 1})
    with pytest.raises(DiscoverError, match=r"unknown grounder 'dino'; choose one of: .*\bmotion\b"):
        GROUNDERS.create({"type": "dino"})
