"""sdk/boxes.py: the one IoU and NMS every detector, tracker and evaluator uses, checked against
torchvision's reference implementation."""

import numpy as np
import pytest
from discover.sdk.boxes import box_iou, nms, pair_iou


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_iou_matches_torchvision_and_the_pair_form():
    torchvision = pytest.importorskip("torchvision")
    import torch

    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    ref = torchvision.ops.box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(box_iou(a, b), ref, atol=1e-9)
    assert pair_iou(a[0], b[3]) == pytest.approx(ref[0, 3])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 5)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_grouped_nms_matches_torchvision_batched_nms(threshold):
    torchvision = pytest.importorskip("torchvision")
    import torch

    rng = np.random.default_rng(int(threshold * 10))
    boxes, scores = random_boxes(rng, 60), rng.uniform(0, 1, 60)
    groups = rng.integers(0, 3, 60)
    ref = torchvision.ops.batched_nms(torch.tensor(boxes), torch.tensor(scores),
                                      torch.tensor(groups), threshold).numpy()
    assert nms(boxes, scores, threshold, groups=groups).tolist() == ref.tolist()
    plain = torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), threshold).numpy()
    assert nms(boxes, scores, threshold).tolist() == plain.tolist()


def test_boxes_of_other_groups_never_suppress():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 9]], float)
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert nms(boxes, scores, 0.5, groups=np.array([0, 1, 2])).tolist() == [0, 1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_pair_iou_agrees_with_the_matrix_form():
    rng = np.random.default_rng(3)
    a, b = random_boxes(rng, 20), random_boxes(rng, 20)
    b[:5] = a[:5]  # identical pairs
    b[5] = (0, 0, 0, 10)  # empty box
    m = box_iou(a, b)
    for i in range(20):
        for j in range(20):
            assert pair_iou(a[i], b[j]) == pytest.approx(m[i, j], abs=1e-12)
