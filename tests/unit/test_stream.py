"""Stream descriptor, side header and task container (sdk/stream.py)."""

from __future__ import annotations

import json
import random

import pytest
from discover.sdk.errors import PacketError
from discover.sdk.regions import Region
from discover.sdk.stream import (
    MAX_TASKS,
    SideContext,
    SideInfo,
    StreamMeta,
    box_unit,
    pack_items,
    peek_manifest,
    unpack_items,
)
from hypothesis import given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=60, deadline=None)
TASKS = ["detection", "segmentation", "vehicles"]
LABELS = ["object", "person", "car", "bicycle"]
W, H = 768, 576


def make_meta(**kw) -> StreamMeta:
    args = dict(camera="cam1", width=W, height=H, fps=10.0, tasks=list(TASKS), labels=list(LABELS),
                codec={"type": "classical", "config": {"quality": 75}, "checkpoint": None},
                grounder={"type": "motion"}, rest_interval=10)
    args.update(kw)
    return StreamMeta(**args)


@st.composite
def regions(draw) -> list[Region]:
    out = []
    for rid in draw(st.lists(st.integers(0, 65535), unique=True, max_size=20)):
        x0 = draw(st.integers(0, W - 1))
        y0 = draw(st.integers(0, H - 1))
        box = (x0, y0, draw(st.integers(x0 + 1, W)), draw(st.integers(y0 + 1, H)))
        tasks = tuple(t for t in TASKS if draw(st.booleans()))
        out.append(Region(rid, box, draw(st.sampled_from(LABELS)),
                          draw(st.floats(-0.5, 1.5, allow_nan=False)), tasks))
    return out


# -- SideInfo ---------------------------------------------------------------------------------


@FAST
@given(regs=regions(), sent=st.sets(st.sampled_from(TASKS)), rest=st.booleans(),
       intra=st.booleans(), codec_data=st.binary(max_size=200))
def test_side_round_trip(regs, sent, rest, intra, codec_data):
    meta = make_meta()
    tasks_sent = tuple(t for t in TASKS if t in sent)  # meta order, as the edge builds it
    side = SideInfo(W, H, tasks_sent, rest, regs, codec_data, intra)
    back = SideInfo.decode(side.encode(meta), meta)
    assert (back.width, back.height, back.tasks_sent, back.rest_sent, back.intra) == (
        W, H, tasks_sent, rest, intra)
    assert back.codec_data == codec_data
    assert [(r.rid, r.box, r.label, r.tasks) for r in back.regions] == [
        (r.rid, r.box, r.label, r.tasks) for r in regs]
    for a, b in zip(regs, back.regions, strict=True):
        clamped = min(max(a.score, 0.0), 1.0)
        assert abs(b.score - clamped) <= 0.5 / 255 + 1e-9  # quantised to 1/255
        assert round(b.score * 255) == pytest.approx(b.score * 255)
    # the manifest peek agrees with the full parse
    assert peek_manifest(side.encode(meta), meta.tasks) == (set(tasks_sent), rest)


def test_side_scores_quantise_to_the_nearest_255th():
    meta = make_meta()
    regs = [Region(1, (0, 0, 10, 10), "person", s) for s in (0.0, 1.0, 0.5, 0.999, 2.0, -1.0)]
    back = SideInfo.decode(SideInfo(W, H, (), False, regs, b"").encode(meta), meta)
    assert [round(r.score * 255) for r in back.regions] == [0, 255, 128, 255, 255, 0]


def test_side_unknown_label_or_task_cannot_be_encoded():
    meta = make_meta()
    with pytest.raises(KeyError):
        SideInfo(W, H, (), False, [Region(1, (0, 0, 5, 5), "dragon", 1.0)], b"").encode(meta)
    with pytest.raises(ValueError):
        SideInfo(W, H, ("ocr",), False, [], b"").encode(meta)


def _side_bytes(regs, meta=None, **kw) -> bytes:
    meta = meta or make_meta()
    return SideInfo(kw.get("w", W), kw.get("h", H), ("detection",), False, regs, b"zz").encode(meta)


def _one_region_side(rid=1, x0=0, y0=0, bw=9, bh=9, label=0, score=0, bits=1, unit=1,
                     version=3) -> bytes:
    """A side payload with one full table entry written field by field (varints < 128):
    version, flags 0 (region ids sent), task bits, region count, unit, then the entry."""
    head = bytes([version, 0, 1, 1, unit])
    return head + bytes([rid, x0, y0, bw, bh, label, score, bits]) + b"zz"


@pytest.mark.parametrize("mutate", [
    lambda b: b[:3],                                   # short header
    lambda b: b[:8],                                   # header says 1 region, a part follows
    lambda b: b"\x02" + b[1:],                         # side version 2 (older release)
    lambda b: b[:1] + b"\x40" + b[2:],                 # an unknown flag
    lambda b: _one_region_side(unit=0),                # no coordinate unit
    lambda b: _one_region_side(bw=0),                  # x0 == x1
    lambda b: _one_region_side(bh=0),                  # y0 == y1
    lambda b: _one_region_side(x0=120, bw=120, unit=4),  # x1 = 960 > W
    lambda b: _one_region_side(y0=100, bh=100, unit=3),  # y1 = 600 > H
    lambda b: _one_region_side(label=99),              # label index
    lambda b: _one_region_side()[:-3],                 # task bits cut off
    lambda b: _one_region_side()[:6] + b"\xff" * 8,    # a varint that never ends
])
def test_malformed_side_is_a_packet_error(mutate):
    good = _side_bytes([Region(1, (0, 0, 9, 9), "person", 0.5, ("detection",))])
    assert SideInfo.decode(good, make_meta()).regions[0].box == (0, 0, 9, 9)
    assert SideInfo.decode(_one_region_side(), make_meta()).regions[0].box == (0, 0, 9, 9)
    with pytest.raises(PacketError) as e:
        SideInfo.decode(mutate(good), make_meta())
    assert e.value.reason == "bad_side"


def test_side_table_of_codec_aligned_boxes_is_compact():
    """Boxes on the learned codec's 16-px grid are written in grid units: 7 bytes a full
    entry at 768x576 (region ids 0..R-1 are not sent), after a 5-byte header."""
    meta = make_meta()
    regs = [Region(i, (16 * i, 16 * (i % 30), 16 * i + 64, 16 * (i % 30) + 96), "car", 0.9,
                   ("detection",)) for i in range(40)]
    side = SideInfo(W, H, ("detection",), False, regs, b"").encode(meta)
    assert len(side) == 5 + 7 * 40
    assert [r.box for r in SideInfo.decode(side, meta).regions] == [r.box for r in regs]
    assert box_unit(regs) == 16 and box_unit([Region(1, (0, 0, 9, 10), "car", 1.0)]) == 1


@FAST
@given(st.binary(max_size=100))
def test_random_side_bytes_only_raise_packet_error(blob):
    try:
        SideInfo.decode(blob, make_meta())
    except PacketError as e:
        assert e.reason == "bad_side"


def test_peek_manifest_on_short_side():
    with pytest.raises(PacketError) as e:
        peek_manifest(b"\x01\x01", TASKS)
    assert e.value.reason == "bad_side"


def test_peek_manifest_reads_bits_in_meta_task_order():
    meta = make_meta()
    side = SideInfo(W, H, ("vehicles",), True, [], b"").encode(meta)
    assert peek_manifest(side, meta.tasks) == ({"vehicles"}, True)
    # a consumer reading with a different task list maps bits by its own list's positions
    assert peek_manifest(side, ["a", "b"]) == (set(), True)


def _moving_tables(rng: random.Random, frames: int) -> list[list[Region]]:
    """Region tables of a street: objects that stay, step a few grid cells, appear, leave,
    change score or tasks, in a new order every frame (as select_regions sorts by score)."""
    objs: dict[int, list] = {}
    tables, nxt = [], 0
    for _ in range(frames):
        for k in list(objs):
            if rng.random() < 0.05:
                del objs[k]
        while len(objs) < 12 and rng.random() < 0.5:
            x, y = rng.randrange(0, W - 128, 8), rng.randrange(0, H - 128, 8)
            objs[nxt] = [x, y, rng.choice(LABELS), rng.random(), (rng.choice(TASKS),)]
            nxt += 1
        for o in objs.values():
            if rng.random() < 0.4:
                o[0] = min(max(0, o[0] + 8 * rng.randint(-2, 2)), W - 128)
                o[1] = min(max(0, o[1] + 8 * rng.randint(-1, 1)), H - 128)
            if rng.random() < 0.3:
                o[3] = rng.random()
        order = sorted(objs.values(), key=lambda o: -o[3])
        tables.append([Region(i, (o[0], o[1], o[0] + 64, o[1] + 128), o[2], o[3], o[4])
                       for i, o in enumerate(order)])
    return tables


def _same(a: list[Region], b: list[Region]) -> bool:
    return [(r.rid, r.box, r.label, r.tasks, round(r.score * 255)) for r in a] == [
        (r.rid, r.box, r.label, r.tasks, round(min(max(r.score, 0), 1) * 255)) for r in b]


def test_predicted_tables_round_trip_and_cost_less_than_full_ones():
    meta, edge, sink = make_meta(), SideContext(), SideContext()
    tables = _moving_tables(random.Random(7), 120)
    predicted = full = 0
    for i, regs in enumerate(tables):
        info = SideInfo(W, H, ("detection",), False, regs, b"c")
        data = edge.encode(info, meta, i)
        back = sink.decode(data, meta, i)
        assert _same(back.regions, regs) and back.codec_data == b"c"
        predicted += len(data)
        full += len(info.encode(meta))
    assert predicted < 0.6 * full  # about 2.5 bytes a region against 7


def test_a_region_that_stayed_put_costs_one_byte():
    meta, edge = make_meta(), SideContext()
    regs = [Region(i, (64 * i, 64, 64 * i + 64, 192), "person", 0.5, ("detection",))
            for i in range(10)]
    edge.encode(SideInfo(W, H, (), False, regs, b""), meta, 0)
    moved = [Region(i, r.box, r.label, r.score, r.tasks) for i, r in enumerate(regs[::-1])]
    again = edge.encode(SideInfo(W, H, (), False, moved, b""), meta, 1)  # same boxes, reordered
    assert len(again) == 5 + 10


def test_lost_frame_breaks_prediction_until_the_next_full_table():
    meta, edge, sink = make_meta(), SideContext(full_every=10), SideContext()
    tables = _moving_tables(random.Random(3), 30)
    sides = [edge.encode(SideInfo(W, H, (), False, t, b""), meta, i) for i, t in enumerate(tables)]
    for i in range(4):
        sink.decode(sides[i], meta, i)
    for i in range(5, 10):  # frame 4 lost: 5..9 continue tables this sink does not have
        with pytest.raises(PacketError) as e:
            sink.decode(sides[i], meta, i)
        assert e.value.reason == "side_reference"
    for i in range(10, 30):  # frame 10 is a full table (full_every): in sync again
        assert _same(sink.decode(sides[i], meta, i).regions, tables[i])


def test_refresh_request_makes_the_next_table_full():
    meta, edge = make_meta(), SideContext()
    tables = [[Region(i, (64 * i, 64 + 8 * f, 64 * i + 64, 192), "car", 0.5, ("vehicles",))
               for i in range(4)] for f in range(3)]
    edge.encode(SideInfo(W, H, (), False, tables[0], b""), meta, 0)
    edge.request_full()
    side = edge.encode(SideInfo(W, H, (), False, tables[1], b""), meta, 1)
    assert _same(SideInfo.decode(side, meta).regions, tables[1])  # no reference needed
    side = edge.encode(SideInfo(W, H, (), False, tables[2], b""), meta, 2)
    with pytest.raises(PacketError):
        SideInfo.decode(side, meta)


def test_side_of_another_frame_size_cannot_be_encoded():
    with pytest.raises(ValueError, match="640x480.*768x576"):
        SideInfo(640, 480, (), False, [], b"").encode(make_meta())


@FAST
@given(st.binary(max_size=100))
def test_random_predicted_side_bytes_only_raise_packet_error(blob):
    ref = _moving_tables(random.Random(1), 1)[0]
    try:
        side = SideInfo.decode(b"\x03\x0c" + blob, make_meta(), ref=ref)
    except PacketError as e:
        assert e.reason == "bad_side"
    else:
        assert all(0 <= r.box[0] < r.box[2] <= W and 0 <= r.box[1] < r.box[3] <= H
                   for r in side.regions)


# -- task container ---------------------------------------------------------------------------


@FAST
@given(st.dictionaries(st.integers(0, 65535), st.binary(max_size=300), max_size=30))
def test_items_round_trip(items):
    packed = pack_items(items)
    vlen = lambda v: 1 if v < 128 else 2 if v < 2**14 else 3  # noqa: E731
    assert len(packed) == vlen(len(items)) + sum(vlen(k) + vlen(len(v)) + len(v)
                                                 for k, v in items.items())
    assert unpack_items(packed) == items


@pytest.mark.parametrize("blob", [
    b"",                                            # no count
    b"\x80",                                        # half a count
    b"\x01",                                        # one item announced, none there
    b"\x01\x05",                                    # its length missing
    b"\x01\x05\x09abc",                             # item runs past the end
    b"\x00junk",                                    # trailing bytes
    b"\x01\x05\x01ab",                              # trailing after the last item
    b"\x01\xff\xff\xff\xff\xff\xff",                 # a varint that never ends
])
def test_malformed_items_are_packet_errors(blob):
    with pytest.raises(PacketError) as e:
        unpack_items(blob)
    assert e.value.reason == "bad_task_payload"


@FAST
@given(st.binary(max_size=80))
def test_random_items_only_raise_packet_error(blob):
    try:
        unpack_items(blob)
    except PacketError as e:
        assert e.reason == "bad_task_payload"


# -- StreamMeta -------------------------------------------------------------------------------


def test_meta_json_round_trip():
    meta = make_meta()
    back = StreamMeta.from_json(meta.to_json())
    assert back == meta
    assert back.session == meta.session and len(meta.session) == 16
    obj = json.loads(meta.to_json())
    assert obj["format"] == "discover-stream" and obj["version"] == 4


def test_meta_of_another_format_version_says_what_to_do():
    with pytest.raises(PacketError) as e:
        StreamMeta.from_json(_meta_obj(version=1))
    assert "version 1" in str(e.value) and "same DISCOVER release" in str(e.value)


def test_meta_sessions_differ():
    assert make_meta().session != make_meta().session


def test_meta_task_bits():
    meta = make_meta()
    assert meta.task_bits(["detection", "vehicles"]) == 0b101
    assert meta.tasks_of(0b110) == ("segmentation", "vehicles")
    assert meta.tasks_of(0xFFFF) == tuple(TASKS)  # bits past the task list are ignored


def test_meta_limits_tasks():
    with pytest.raises(ValueError):
        make_meta(tasks=[f"t{i}" for i in range(MAX_TASKS + 1)])


def _meta_obj(**kw) -> bytes:
    obj = json.loads(make_meta().to_json())
    obj.update(kw)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


@pytest.mark.parametrize("data", [
    b"",
    b"not json",
    b"\xff\xfe",
    b"[]",
    b"null",
    b'"a string"',
    b"42",
    _meta_obj(format="other"),
    _meta_obj(version=1),                     # an older release's stream
    _meta_obj(format=...),                    # missing format
    _meta_obj(camera=...),                    # missing field
    _meta_obj(extra_field=1),                 # unknown field
    _meta_obj(tasks=[f"t{i}" for i in range(MAX_TASKS + 1)]),
    _meta_obj(tasks="detection"),             # not a list
    _meta_obj(labels=5),
    _meta_obj(labels=[1, 2]),
    _meta_obj(width="768"),
    _meta_obj(height=0),
    _meta_obj(width=70000),                   # does not fit the side header
    _meta_obj(codec="classical"),
])
def test_bad_meta_is_a_packet_error(data):
    with pytest.raises(PacketError) as e:
        StreamMeta.from_json(data)
    assert e.value.reason == "bad_meta"
