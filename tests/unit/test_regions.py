"""Region selection shared by the edge and the benchmarks (sdk/regions.py): merging overlapping
regions only where it codes fewer cells and sends no sink more than before."""

from __future__ import annotations

import numpy as np
from discover.sdk.regions import (
    Detection,
    Region,
    merge_overlaps,
    paste_regions,
    region_mask,
    select_regions,
)


def cells(regions: list[Region]) -> int:
    """What a region codec codes: every region's box, overlaps counted once per region."""
    return sum(r.area for r in regions)


def test_contained_box_merges_into_its_container():
    out = merge_overlaps([Region(0, (0, 0, 64, 64), "person", 0.5, ("det",)),
                          Region(1, (16, 16, 48, 48), "bag", 0.9, ("det",))])
    assert len(out) == 1 and out[0].box == (0, 0, 64, 64)
    assert out[0].label == "bag" and out[0].score == 0.9  # the better-scoring one names it


def test_overlap_merges_only_when_the_bounding_box_is_cheaper():
    a = Region(0, (0, 0, 64, 64), "car", 0.8, ("det",))
    side_by_side = Region(1, (32, 0, 96, 64), "car", 0.7, ("det",))  # bbox 96x64 < 2 x 64x64
    diagonal = Region(1, (48, 48, 112, 112), "car", 0.7, ("det",))   # bbox 112^2 > 2 x 64^2
    merged = merge_overlaps([a, side_by_side])
    assert [r.box for r in merged] == [(0, 0, 96, 64)]
    assert cells(merged) < cells([a, side_by_side])
    kept = merge_overlaps([a, diagonal])
    assert [r.box for r in kept] == [a.box, diagonal.box]


def test_no_sink_receives_more_than_before():
    """Different tasks merge only when the inner box's tasks are among the outer one's."""
    outer = Region(0, (0, 0, 64, 64), "car", 0.8, ("det", "cls"))
    inner_det = Region(1, (16, 16, 48, 48), "person", 0.9, ("det",))
    assert len(merge_overlaps([outer, inner_det])) == 1
    inner_seg = Region(1, (16, 16, 48, 48), "person", 0.9, ("seg",))
    assert len(merge_overlaps([outer, inner_seg])) == 2
    other = Region(1, (32, 0, 96, 64), "car", 0.7, ("cls",))  # overlapping, other tasks
    assert len(merge_overlaps([outer, other])) == 2


def test_chains_merge_and_ids_are_renumbered():
    rs = [Region(5, (0, 0, 32, 32), "a", 0.5, ("det",)),
          Region(9, (16, 0, 48, 32), "b", 0.6, ("det",)),
          Region(7, (32, 0, 64, 32), "c", 0.7, ("det",)),
          Region(3, (200, 200, 232, 232), "d", 0.4, ("det",))]
    out = merge_overlaps(rs)
    assert [r.box for r in out] == [(0, 0, 64, 32), (200, 200, 232, 232)]
    assert [r.rid for r in out] == [0, 1] and out[0].label == "c"


def test_select_regions_routes_dedupes_and_merges():
    labels = {"det": {"person", "car"}, "cls": {"car"}}
    dets = [Detection((100, 100, 200, 160), "car", 0.4),
            Detection((102, 98, 201, 161), "truck", 0.8, aliases=("car",)),  # same van
            Detection((110, 110, 150, 150), "person", 0.6),  # inside the van's box
            Detection((400, 100, 450, 150), "dog", 0.9)]  # no task wants it
    out = select_regions(dets, labels, 768, 576, align=16, margin=0.0, dedupe_iou=0.6)
    assert len(out) == 1
    assert out[0].tasks == ("det", "cls") and out[0].label == "truck"
    assert all(v % 16 == 0 for v in out[0].box)
    unmerged = select_regions(dets, labels, 768, 576, align=16, margin=0.0, merge=False)
    assert len(unmerged) == 2


def test_paste_regions_puts_each_crop_at_its_box_in_crop_order():
    canvas = np.zeros((8, 10, 3), np.uint8)
    regions = [Region(0, (0, 0, 4, 4), "a", 0.9), Region(1, (2, 2, 6, 5), "b", 0.9)]
    crops = {1: np.full((3, 4, 3), 20, np.uint8), 0: np.full((4, 4, 3), 10, np.uint8),
             7: np.full((2, 2, 3), 99, np.uint8)}  # 7: not in the table, left out
    assert paste_regions(canvas, regions, crops) == [1, 0]
    assert (canvas[0:4, 0:4] == 10).all()  # pasted last: wins the overlap
    assert (canvas[4, 2:6] == 20).all() and (canvas[2:5, 4:6] == 20).all()
    assert int(canvas.sum()) == 10 * 16 * 3 + 20 * (12 - 4) * 3  # nothing outside the boxes


def test_region_mask_is_the_union_of_the_boxes_grown_and_clipped():
    regions = [Region(0, (1, 1, 3, 2), "a", 0.9), Region(1, (8, 5, 10, 6), "b", 0.9)]
    mask = region_mask(regions, 10, 6)
    assert mask.shape == (6, 10) and int(mask.sum()) == 2 + 2
    assert mask[1, 1:3].all() and mask[5, 8:10].all()
    grown = region_mask(regions, 10, 6, grow=1)
    assert int(grown.sum()) == 4 * 3 + 3 * 2  # (0..4 x 0..3) and (7..10 x 4..6), clipped
