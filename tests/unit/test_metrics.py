"""COCO-style AP (sdk/metrics.py) on cases whose answer follows by hand from the definition,
and against pycocotools / faster_coco_eval on random data where one is importable."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from discover.sdk.boxes import box_iou
from discover.sdk.metrics import COCO_IOU_THRESHOLDS, FrameMatches, average_precision, coco_map
from hypothesis import given, settings
from hypothesis import strategies as st

REF = (0.0, 0.0, 100.0, 100.0)
FAR = (300.0, 300.0, 340.0, 340.0)  # overlaps nothing


def ap(preds, refs, t=0.5, **kw) -> float:  # noqa: ANN001
    return average_precision(preds, refs, t, **kw).map


# -- by hand ---------------------------------------------------------------------------------------

def test_box_iou():
    got = box_iou(np.array([REF]), np.array([REF, (0, 0, 100, 50), (50, 0, 150, 100), FAR]))
    assert got.tolist() == [[1.0, 0.5, pytest.approx(50 / 150), 0.0]]
    assert box_iou(np.zeros((0, 4)), np.array([REF])).shape == (0, 1)
    assert box_iou(np.array([(5, 5, 5, 9)]), np.array([(5, 5, 5, 9)])).tolist() == [[0.0]]


def test_perfect_predictions():
    refs = [[(REF, "person"), ((200, 0, 260, 80), "car")], [], [((10, 10, 30, 50), "person")]]
    preds = [[(b, lb, 0.9 - 0.1 * i) for i, (b, lb) in enumerate(f)] for f in refs]
    r = average_precision(preds, refs)
    assert r.map == 1.0 and r.per_class == {"person": 1.0, "car": 1.0}
    assert r.references == {"person": 2, "car": 1}
    m = coco_map(preds, refs)
    assert m["map_50"] == m["map_75"] == m["map_50_95"] == 1.0


def test_false_positive_ranked_above_the_true_positive():
    # ranked: FP (precision 0, recall 0), TP (precision 1/2, recall 1); made monotonic, the
    # precision is 1/2 at every one of the 101 recall points
    preds = [[(FAR, "person", 0.9), (REF, "person", 0.8)]]
    assert ap(preds, [[(REF, "person")]]) == pytest.approx(0.5)


def test_false_positive_ranked_below_costs_nothing():
    preds = [[(REF, "person", 0.9), (FAR, "person", 0.8)]]
    assert ap(preds, [[(REF, "person")]]) == pytest.approx(1.0)


def test_ranking_is_across_frames():
    # the same FP-above-TP order, spread over two frames
    preds = [[(FAR, "person", 0.9)], [(REF, "person", 0.8)]]
    assert ap(preds, [[], [(REF, "person")]]) == pytest.approx(0.5)


def test_missed_reference():
    # recall reaches 1/2 with precision 1: recall points 0.00 .. 0.50 (51 of 101) score 1
    refs = [[(REF, "person"), (FAR, "person")]]
    assert ap([[(REF, "person", 0.9)]], refs) == pytest.approx(51 / 101)
    assert ap([[]], refs) == 0.0


def test_wrong_class():
    r = average_precision([[(REF, "car", 0.9)]], [[(REF, "person")]])
    assert r.per_class == {"person": 0.0}  # car has no reference: no AP, not in the mean
    assert r.map == 0.0


def test_duplicate_box_is_a_false_positive():
    preds = [[(REF, "person", 0.9), (REF, "person", 0.8)]]
    refs = [[(REF, "person"), (FAR, "person")]]
    # ranked: TP (precision 1, recall 1/2), then the duplicate, a FP: recall stays at 1/2
    assert ap(preds, refs) == pytest.approx(51 / 101)


@pytest.mark.parametrize("height,matched", [(49.0, False), (50.0, True), (51.0, True)])
def test_iou_threshold_boundary(height, matched):
    # a full-width box of height h inside REF has IoU h / 100; COCO matches IoU >= threshold
    pred = [[((0.0, 0.0, 100.0, height), "person", 0.9)]]
    assert ap(pred, [[(REF, "person")]], 0.5) == (1.0 if matched else 0.0)


def test_map_is_over_classes_in_the_references():
    refs = [[(REF, "person"), ((200, 0, 260, 80), "car")]]
    preds = [[(REF, "person", 0.9), (FAR, "car", 0.8), ((200, 0, 260, 80), "car", 0.7),
              ((0, 200, 50, 260), "dog", 0.95)]]
    r = average_precision(preds, refs)
    assert r.per_class == {"person": 1.0, "car": pytest.approx(0.5)}
    assert r.map == pytest.approx(0.75)


def test_map_50_95_counts_the_thresholds_a_box_passes():
    # IoU 0.72 passes 0.50, 0.55, 0.60, 0.65, 0.70 and fails 0.75 .. 0.95: 5 of 10
    pred = [[((0.0, 0.0, 100.0, 72.0), "person", 0.9)]]
    m = coco_map(pred, [[(REF, "person")]])
    assert m["map_50"] == 1.0 and m["map_75"] == 0.0
    assert m["map_50_95"] == pytest.approx(0.5)
    assert len(COCO_IOU_THRESHOLDS) == 10


def test_max_detections_per_frame_and_class():
    refs = [[(REF, "person"), (FAR, "person")]]
    preds = [[(REF, "person", 0.9), (FAR, "person", 0.8)]]
    assert ap(preds, refs) == 1.0
    assert ap(preds, refs, max_detections=1) == pytest.approx(51 / 101)


def test_empty_and_mismatched_inputs():
    assert average_precision([], []).map == 0.0
    assert coco_map([[]], [[]])["map_50_95"] == 0.0
    with pytest.raises(ValueError, match="frames"):
        average_precision([[]], [[], []])
    with pytest.raises(ValueError, match="iou_threshold"):
        average_precision([[]], [[]], 1.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=5),
                min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_frame_order_does_not_matter(frames, rnd):
    """AP ranks predictions over all frames at once: shuffling the frames changes nothing
    (scores distinct; with ties the order among equal scores is the input order, as in COCO)."""
    grid = [(20.0 * c, 20.0 * r, 20.0 * c + 18, 20.0 * r + 18) for r in range(4) for c in range(4)]
    refs = [[(grid[i], "a") for i in range(0, 16, 3)] for _ in frames]
    scores = [(k + 1) / 100 for k in range(sum(map(len, frames)))]
    rnd.shuffle(scores)
    it = iter(scores)
    preds = [[(grid[4 * r + c], "a", next(it)) for r, c in f] for f in frames]
    order = list(range(len(frames)))
    rnd.shuffle(order)
    a = average_precision(preds, refs).map
    b = average_precision([preds[i] for i in order], [refs[i] for i in order]).map
    assert a == pytest.approx(b, abs=1e-12) and 0.0 <= a <= 1.0


# -- against the reference implementation ----------------------------------------------------------

def random_case(seed: int, frames: int = 25, classes: tuple[str, ...] = ("person", "car", "dog")):
    """Refs and noisy predictions: jittered copies (some badly), misses, strays, class swaps."""
    rng = np.random.default_rng(seed)
    refs, preds = [], []
    for _ in range(frames):
        fr, fp = [], []
        for _ in range(int(rng.integers(0, 7))):
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(8, 120, 2)
            box = (x, y, x + w, y + h)
            label = classes[int(rng.integers(len(classes)))]
            fr.append((box, label))
            if rng.random() < 0.8:
                j = rng.normal(0, rng.choice([0.03, 0.15, 0.4]), 4) * [w, h, w, h]
                plabel = label if rng.random() < 0.9 else classes[int(rng.integers(len(classes)))]
                fp.append((tuple(np.add(box, j)), plabel, float(rng.random())))
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(8, 120, 2)
            fp.append(((x, y, x + w, y + h), classes[int(rng.integers(len(classes)))],
                       float(rng.random())))
        fp = [(tuple(float(v) for v in b), lb, s) for b, lb, s in fp
              if b[2] - b[0] > 1 and b[3] - b[1] > 1]
        refs.append(fr)
        preds.append(fp)
    return preds, refs


def reference_coco(preds, refs):  # noqa: ANN001, ANN201
    """mAP@[.5:.95], @.5, @.75 and per-class AP@.5 from pycocotools or faster_coco_eval."""
    if importlib.util.find_spec("pycocotools") is not None:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    elif importlib.util.find_spec("faster_coco_eval") is not None:  # same API
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        pytest.skip("neither faster_coco_eval nor pycocotools is installed")
    import contextlib
    import io

    cats = sorted({lb for f in refs for _, lb in f} | {lb for f in preds for _, lb, _ in f})
    cid = {c: i + 1 for i, c in enumerate(cats)}
    images, anns, dets = [], [], []
    for i, (fp, fr) in enumerate(zip(preds, refs, strict=True)):
        images.append({"id": i + 1, "width": 1000, "height": 1000})
        for b, lb in fr:
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cid[lb],
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for b, lb, s in fp:
            dets.append({"image_id": i + 1, "category_id": cid[lb], "score": s,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": v, "name": k} for k, v in cid.items()]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # T x R x K x A x M
    per_class = {}
    for k, c in enumerate(ev.params.catIds):
        p = prec[0, :, k, 0, -1]
        if (p > -1).any():
            per_class[cats[c - 1]] = float(p[p > -1].mean())
    return {"map_50_95": ev.stats[0], "map_50": ev.stats[1], "map_75": ev.stats[2],
            "per_class_50": per_class}


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_coco_reference_on_random_data(seed):
    preds, refs = random_case(seed)
    want = reference_coco(preds, refs)
    got = coco_map(preds, refs)
    for k in ("map_50_95", "map_50", "map_75"):
        assert got[k] == pytest.approx(want[k], abs=1e-3), k
    assert got["per_class_50"].keys() == want["per_class_50"].keys()
    for c, v in want["per_class_50"].items():
        assert got["per_class_50"][c] == pytest.approx(v, abs=1e-3), c


# -- matched once, scored on resamples (the bootstrap's mAP) ----------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_frame_matches_equal_average_precision_on_any_multiset(seed):
    """mAP from the frames matched once equals matching the resampled frames from scratch."""
    preds, refs = random_case(seed, frames=30)
    m = FrameMatches(preds, refs)
    assert len(m) == 30
    assert m.map() == pytest.approx(ap(preds, refs), abs=1e-12)
    draw = np.random.default_rng(seed).integers(0, 30, size=30)  # repeats and gaps
    assert m.map(draw) == pytest.approx(ap([preds[i] for i in draw], [refs[i] for i in draw]),
                                        abs=1e-12)
    assert FrameMatches(preds, refs, 0.75).map(draw) == pytest.approx(
        ap([preds[i] for i in draw], [refs[i] for i in draw], 0.75), abs=1e-12)
    with pytest.raises(ValueError, match="frames"):
        FrameMatches(preds, refs[:-1])
