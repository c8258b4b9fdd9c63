"""COCO RLE (sdk.masks): byte-identical to pycocotools both ways, on random and real masks."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
from discover.sdk import masks
from discover.sdk.assets import SAMPLE_CLIP
from pycocotools import mask as cocomask


def _coco_encode(m: np.ndarray) -> dict:
    rle = cocomask.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@pytest.fixture(scope="module")
def real_masks() -> list[np.ndarray]:
    """Irregular masks from frame 0 of the sample clip: grass, dark pixels, edges."""
    with av.open(str(SAMPLE_CLIP)) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="bgr24")
    b, g, r = (frame[:, :, i].astype(int) for i in range(3))
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    _, otsu = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return [g > r + 10, gray < 60, otsu > 0, cv2.Canny(gray, 80, 160) > 0,
            (g > r + 10)[100:317, 33:500]]


def _random_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [rng.random((h, w)) < p
           for h, w in [(1, 1), (1, 37), (29, 1), (17, 23), (64, 48), (120, 160)]
           for p in (0.02, 0.5, 0.97)]
    out += [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.zeros((0, 4), bool)]
    blob = np.zeros((300, 400), bool)  # long runs: multi-character counts, negative deltas
    blob[40:260, 10:390] = True
    blob[100:120, :] = False
    return [*out, blob]


def test_random_masks_match_pycocotools_and_round_trip():
    for m in _random_masks():
        ours = masks.encode(m)
        if m.size:
            assert ours == _coco_encode(m), m.shape
            theirs = cocomask.decode({"size": ours["size"], "counts": ours["counts"].encode()})
            assert np.array_equal(theirs.astype(bool), m)
        back = masks.decode(ours)
        assert back.dtype == bool and back.shape == m.shape and np.array_equal(back, m)


def test_real_masks_match_pycocotools(real_masks):
    for m in real_masks:
        ours = masks.encode(m)
        assert ours == _coco_encode(m)
        assert len(ours["counts"]) > 50  # real structure, many runs
        assert np.array_equal(masks.decode(ours), m)
        coco_rle = {"size": ours["size"], "counts": ours["counts"].encode()}
        assert masks.area(ours) == int(m.sum()) == int(cocomask.area(coco_rle))
        assert masks.bbox(m) == [int(v) for v in cocomask.toBbox(coco_rle)]


def test_decodes_pycocotools_output_and_uncompressed_counts(real_masks):
    m = real_masks[0]
    rle = cocomask.encode(np.asfortranarray(m.astype(np.uint8)))
    assert np.array_equal(masks.decode(rle), m)  # bytes counts, numpy size, as pycocotools gives
    h, w = m.shape
    runs = masks._runs(m).tolist()
    assert np.array_equal(masks.decode({"size": [h, w], "counts": runs}), m)
    assert masks.encode(m)["counts"] == cocomask.frPyObjects(
        {"size": [h, w], "counts": runs}, h, w)["counts"].decode()


def test_encode_is_json_ready_and_rejects_bad_input():
    import json

    rle = masks.encode(np.eye(4, dtype=np.uint8))
    assert json.loads(json.dumps(rle)) == rle
    with pytest.raises(ValueError):
        masks.encode(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        masks.decode({"size": [4, 4], "counts": [3, 2]})  # runs cover 5 of 16 pixels
    with pytest.raises(ValueError):
        masks.decode({"size": [4, 4], "counts": "P"})  # a continuation bit, then nothing
