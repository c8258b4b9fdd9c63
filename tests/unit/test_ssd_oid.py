"""ssd-oid: the committed Open Images SSD (ONNX) and its grounder on the real sample clip."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import discover.sdk.grounders.ssd_oid  # noqa: E402,F401  (registers "ssd-oid")
from discover.sdk.assets import SAMPLE_CLIP  # noqa: E402
from discover.sdk.errors import DiscoverError  # noqa: E402
from discover.sdk.grounders import GROUNDERS  # noqa: E402
from discover.sdk.models.ssd_oid import (  # noqa: E402
    CONVERT_COMMAND,
    DEFAULT_WEIGHTS,
    NUM_ANCHORS,
    OID_LABELS,
    SsdOid,
    decode_boxes,
    ssd_anchors,
)

PERSON = OID_LABELS.index("Person")
# The three pedestrians visible in frame 0 (x0, y0, x1, y1), placed by eye (tests/test_nanodet.py).
FRAME0_PEOPLE = np.array(
    [[500, 158, 530, 234], [640, 239, 684, 324], [251, 220, 283, 309]], dtype=np.float32
)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a`` (4,) against boxes ``b`` (N, 4)."""
    if len(b) == 0:
        return np.zeros(0)
    w = (np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0])).clip(0)
    h = (np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1])).clip(0)
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1])
    return inter / (area + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)


@pytest.fixture(scope="module")
def frame0() -> np.ndarray:
    with av.open(str(SAMPLE_CLIP)) as c:
        return next(c.decode(video=0)).to_ndarray(format="bgr24")


@pytest.fixture(scope="module")
def model() -> SsdOid:
    if not DEFAULT_WEIGHTS.is_file():
        pytest.fail(f"committed model missing: {DEFAULT_WEIGHTS}; run `{CONVERT_COMMAND}`")
    return SsdOid(intra_op_num_threads=2)


@pytest.fixture(scope="module")
def grounder():
    return GROUNDERS.create({"type": "ssd-oid"})


def test_anchors_follow_the_graph_options():
    a = ssd_anchors()
    assert a.shape == (NUM_ANCHORS, 4)
    # lowest layer: 19x19 cells x 3 anchors (scale 0.1 square, then 0.2 at ratios 2 and 0.5)
    assert np.allclose(a[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1])
    assert np.allclose(a[1, 2:], [0.2 * 2**0.5, 0.2 / 2**0.5], atol=1e-6)
    assert np.allclose(a[1083, :2], [0.05, 0.05])  # first cell of the 10x10 layer
    assert np.allclose(a[-1], [0.5, 0.5, np.sqrt(0.95), np.sqrt(0.95)], atol=1e-6)
    # zero encodings decode to the anchors themselves
    boxes = decode_boxes(np.zeros((NUM_ANCHORS, 4), np.float32), a)
    assert np.allclose((boxes[:, :2] + boxes[:, 2:]) / 2, a[:, :2], atol=1e-6)
    assert np.allclose(boxes[:, 2:] - boxes[:, :2], a[:, 2:], atol=1e-6)


def test_committed_graph_and_its_label_map(model):
    shapes = sorted(tuple(o.shape[1:]) for o in model.session.get_outputs())
    assert shapes == [(NUM_ANCHORS, 4), (NUM_ANCHORS, 24)]
    meta = model.session.get_modelmeta().custom_metadata_map
    assert tuple(meta["labels"].split("\n")) == OID_LABELS


def test_frame0_finds_people_inside_image(model, frame0):
    h, w = frame0.shape[:2]
    det = model.detect(frame0, score_threshold=0.3)
    assert np.all(np.diff(det.scores) <= 0) and np.all(det.scores > 0.3)
    assert np.all(det.boxes[:, 0] >= 0) and np.all(det.boxes[:, 2] <= w)
    assert np.all(det.boxes[:, 1] >= 0) and np.all(det.boxes[:, 3] <= h)
    assert np.all(det.boxes[:, 2] > det.boxes[:, 0]) and np.all(det.boxes[:, 3] > det.boxes[:, 1])
    people = det.boxes[det.class_ids == PERSON]
    # the boxes land on the people (a wrong anchor order or decode puts them elsewhere)
    on_person = [_iou(truth, people).max(initial=0) for truth in FRAME0_PEOPLE]
    assert sum(o > 0.6 for o in on_person) >= 2, (on_person, people)
    assert len(people) >= 2


def test_flip_consistency(model, frame0):
    w = frame0.shape[1]
    a = model.detect(frame0, score_threshold=0.45, classes=[PERSON])
    b = model.detect(np.ascontiguousarray(frame0[:, ::-1]), score_threshold=0.3, classes=[PERSON])
    mirrored = b.boxes.copy()
    mirrored[:, [0, 2]] = w - b.boxes[:, [2, 0]]
    assert len(a) >= 2
    for box in a.boxes:  # every confident person is found again, in the mirrored place
        assert _iou(box, mirrored).max(initial=0) > 0.7, (box, mirrored)


def test_grounder_labels_aliases_and_parents(grounder, frame0):
    dets = grounder.ground(frame0, ["pedestrian"])
    assert len(dets) >= 2 and {d.label for d in dets} == {"pedestrian"}
    assert all(d.score >= grounder.config.score_threshold for d in dets)
    both = grounder.ground(frame0, ["person", "car", "vehicle"])
    cars = [d for d in both if d.label == "car"]
    assert cars and all(d.aliases == ("vehicle",) for d in cars)  # a Car is a Vehicle
    only_vehicle = grounder.ground(frame0, ["van"])  # van -> Vehicle, and so Car boxes too
    assert only_vehicle and {d.label for d in only_vehicle} == {"van"}
    assert grounder.ground(frame0, ["zeppelin"]) == []


def test_unmapped_labels_reported_once(grounder, frame0, caplog):
    with caplog.at_level(logging.WARNING):
        grounder.ground(frame0, ["person", "unicorn"])
        grounder.ground(frame0, ["person", "unicorn"])
    hits = [r.getMessage() for r in caplog.records if "have no class" in r.getMessage()]
    assert len(hits) == 1 and "1 of 2 profile labels" in hits[0]
    assert "discover ground --labels" in hits[0] and "unicorn" not in hits[0]


def test_missing_weights_name_the_conversion_command(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(DiscoverError, match="tools/convert_ssd_oid.py") as err:
        SsdOid(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(DiscoverError, match="tools/convert_ssd_oid.py"):
        GROUNDERS.create({"type": "ssd-oid", "weights": str(missing)})


def test_damaged_weights_are_one_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DiscoverError, match="damaged or not ONNX"):
        SsdOid(bad)
