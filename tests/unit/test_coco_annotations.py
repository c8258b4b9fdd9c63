"""COCO-format reference boxes matched to benchmark frames (discover/bench/coco_annotations.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from discover.sdk.errors import DiscoverError

from discover.bench.coco_annotations import load_coco_references

CATS = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 99, "name": "unicorn"}]


def write(tmp_path: Path, images: list[dict], anns: list[dict]) -> Path:
    p = tmp_path / "ann.json"
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return p


def ann(image_id: int, cat: int, bbox: list[float], **kw) -> dict:
    return {"id": len(bbox) + image_id * 10 + cat, "image_id": image_id, "category_id": cat,
            "bbox": bbox, **kw}


def test_frames_by_frame_id_boxes_as_corners_crowd_and_unknown_left_out(tmp_path):
    p = write(tmp_path, [{"id": 7, "file_name": "x.jpg", "frame_id": 2},
                         {"id": 8, "file_name": "y.jpg", "frame_id": 40}],
              [ann(7, 1, [10, 20, 30, 40]), ann(7, 3, [0, 0, 5, 5], iscrowd=1),
               ann(7, 99, [1, 1, 2, 2]), ann(8, 3, [0, 0, 9, 9])])
    refs, info = load_coco_references(p, 5, ["person", "car"])
    assert refs[2] == [((10.0, 20.0, 40.0, 60.0), "person")]
    assert all(not refs[f] for f in (0, 1, 3, 4))
    assert info["frames"] == [2]  # frame 40 is past the 5 benchmarked
    assert info["left_out"] == {"crowd": 1, "unknown_categories": {"unicorn": 1}}
    assert info["boxes"] == {"person": 1}


def test_folder_frames_by_file_name_video_frames_by_number(tmp_path):
    images = [{"id": 1, "file_name": "sub/b.png"}, {"id": 2, "file_name": "frame_000003.jpg"}]
    p = write(tmp_path, images, [ann(1, 3, [0, 0, 4, 4]), ann(2, 1, [1, 1, 2, 2])])
    refs, info = load_coco_references(p, 4, ["person", "car"], ["a.png", "b.png", "c.png"])
    assert info["frames"] == [1] and refs[1][0][1] == "car"
    refs, info = load_coco_references(p, 4, ["person", "car"])  # a video: by number
    assert info["frames"] == [3] and refs[3][0][1] == "person"


@pytest.mark.parametrize("content, words", [
    ("{not json", ["not a COCO annotation file"]),
    ('{"images": []}', ["not a COCO annotation file", "categories"]),
])
def test_bad_files_give_one_clear_error(tmp_path, content, words):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(DiscoverError) as e:
        load_coco_references(p, 3, ["car"])
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_no_image_matches_a_frame(tmp_path):
    p = write(tmp_path, [{"id": 1, "file_name": "zzz.jpg"}], [])
    with pytest.raises(DiscoverError, match="none of its 1 images matches"):
        load_coco_references(p, 3, ["car"], ["a.jpg"])
    with pytest.raises(DiscoverError, match="no such file"):
        load_coco_references(tmp_path / "missing.json", 3, ["car"])
