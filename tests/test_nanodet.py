"""NanoDet COCO-80 detector: the committed ONNX model on real street frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

from discover.sdk.errors import DiscoverError  # noqa: E402
from discover.sdk.models.nanodet import (  # noqa: E402
    COCO80_LABELS,
    DEFAULT_WEIGHTS,
    Detections,
    NanoDet,
)

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "sdk" / "assets" / "sample" / "street.mp4"
PERSON = COCO80_LABELS.index("person")
# The three pedestrians visible in frame 0 (x0, y0, x1, y1), placed by eye on the frame.
FRAME0_PEOPLE = np.array(
    [[500, 158, 530, 234], [640, 239, 684, 324], [251, 220, 283, 309]], dtype=np.float32
)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a`` (4,) against boxes ``b`` (N, 4)."""
    w = (np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0])).clip(0)
    h = (np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1])).clip(0)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def detector() -> NanoDet:
    if not DEFAULT_WEIGHTS.is_file():
        pytest.fail(f"committed model missing: {DEFAULT_WEIGHTS}")
    return NanoDet(intra_op_num_threads=2)


@pytest.fixture(scope="module")
def frames() -> dict[int, np.ndarray]:
    if not CLIP.is_file():
        pytest.skip(f"sample clip {CLIP} not present")
    cap = cv2.VideoCapture(str(CLIP))
    wanted, got, index = {0, 99}, {}, 0
    while index <= max(wanted):
        ok, frame = cap.read()
        if not ok:
            break
        if index in wanted:
            got[index] = frame
        index += 1
    cap.release()
    if 0 not in got:
        pytest.skip(f"cannot decode {CLIP} with this OpenCV build")
    return got


def test_committed_model_graph(detector: NanoDet) -> None:
    assert detector.input_size == 416
    shapes = {tuple(o.shape[1:]) for o in detector.session.get_outputs()}
    assert shapes == {(n, c) for n in (2704, 676, 169) for c in (80, 44)}
    assert len(COCO80_LABELS) == 80 and COCO80_LABELS[2] == "car"


def test_frame0_finds_people_inside_image(detector: NanoDet, frames: dict) -> None:
    frame = frames[0]
    h, w = frame.shape[:2]
    det = detector.detect(frame, score_threshold=0.35)
    assert det.boxes.shape == (len(det), 4) and det.boxes.dtype == np.float32
    assert det.scores.shape == det.class_ids.shape == (len(det),)
    assert np.all(det.scores >= 0.35) and np.all(det.scores <= 1.0)
    assert np.all(np.diff(det.scores) <= 0), "sorted by score"
    assert np.all((det.class_ids >= 0) & (det.class_ids < 80))
    people = det.boxes[det.class_ids == PERSON]
    assert len(people) >= 3, det.labels
    assert np.all(det.boxes[:, 0] >= 0) and np.all(det.boxes[:, 2] <= w)
    assert np.all(det.boxes[:, 1] >= 0) and np.all(det.boxes[:, 3] <= h)
    assert np.all(det.boxes[:, 2] > det.boxes[:, 0]) and np.all(det.boxes[:, 3] > det.boxes[:, 1])
    # Pedestrians in this overhead view are upright: taller than wide, not frame-sized.
    heights, widths = people[:, 3] - people[:, 1], people[:, 2] - people[:, 0]
    assert np.all(heights > widths) and np.all(heights < h / 2)


def test_frame0_boxes_sit_on_the_people(detector: NanoDet, frames: dict) -> None:
    det = detector.detect(frames[0])
    people = det.boxes[det.class_ids == PERSON]
    # One box per pedestrian: a wrong decode (sides swapped, centre offset) leaves shifted
    # duplicates that class-aware NMS does not merge.
    assert 3 <= len(people) <= 4, people
    for truth in FRAME0_PEOPLE:
        assert _iou(truth, people).max() > 0.75, (truth, people)


def test_later_frame_finds_more_people(detector: NanoDet, frames: dict) -> None:
    if 99 not in frames:
        pytest.skip("clip shorter than 100 frames")
    det = detector.detect(frames[99])
    assert int((det.class_ids == PERSON).sum()) >= 5, det.labels
    assert {"car", "truck"} & set(det.labels), det.labels


def test_flipped_frame_mirrors_boxes(detector: NanoDet, frames: dict) -> None:
    frame = frames[0]
    w = frame.shape[1]
    orig = detector.detect(frame)
    flip = detector.detect(np.ascontiguousarray(frame[:, ::-1]))
    mirrored = flip.boxes.copy()
    mirrored[:, [0, 2]] = w - flip.boxes[:, [2, 0]]
    strong = orig.scores > 0.5
    assert strong.sum() >= 3
    for box, cls in zip(orig.boxes[strong], orig.class_ids[strong], strict=True):
        same = mirrored[flip.class_ids == cls]
        assert len(same), f"no {COCO80_LABELS[cls]} in flipped frame"
        assert _iou(box, same).max() > 0.7


def test_thresholds_and_limits(detector: NanoDet, frames: dict) -> None:
    frame = frames[0]
    assert len(detector.detect(frame, max_detections=2)) == 2
    assert len(detector.detect(frame, score_threshold=0.99)) == 0
    loose = detector.detect(frame, score_threshold=0.2)
    assert len(loose) >= len(detector.detect(frame))


def test_blank_and_odd_inputs(detector: NanoDet) -> None:
    blank = detector.detect(np.full((240, 320, 3), 127, np.uint8))
    assert isinstance(blank, Detections) and len(blank) == 0 and blank.boxes.shape == (0, 4)
    assert len(detector.detect(np.zeros((50, 60), np.uint8))) == 0  # grayscale accepted
    with pytest.raises(ValueError, match="HxWx3"):
        detector.detect(np.zeros((10, 10, 4), np.uint8))


def test_missing_weights_error_names_file_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "nanodet_coco80.onnx"
    with pytest.raises(FileNotFoundError) as info:
        NanoDet.from_path(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "tools/convert_nanodet.py" in message
    assert "\n" not in message


def test_damaged_weights_error(tmp_path: Path) -> None:
    bad = tmp_path / "nanodet_coco80.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(DiscoverError, match="convert_nanodet.py"):
        NanoDet(bad)
