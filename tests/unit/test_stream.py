"""Stream descriptor, side header and task container (sdk/stream.py)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdk.errors import PacketError
from sdk.regions import Region
from sdk.stream import (
    MAX_TASKS,
    SideInfo,
    StreamMeta,
    pack_items,
    peek_manifest,
    unpack_items,
)

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


@pytest.mark.parametrize("mutate", [
    lambda b: b[:5],                                   # short header
    lambda b: b[:12],                                  # header says 1 region, none follows
    lambda b: b"\x02" + b[1:],                         # unknown side version
    lambda b: b[:10] + struct.pack(">HHHHHHBH", 1, 5, 5, 5, 9, 0, 0, 0) + b[25:],  # x0 == x1
    lambda b: b[:10] + struct.pack(">HHHHHHBH", 1, 0, 0, W + 1, 9, 0, 0, 0) + b[25:],  # x1 > W
    lambda b: b[:10] + struct.pack(">HHHHHHBH", 1, 0, 0, 9, H + 1, 0, 0, 0) + b[25:],  # y1 > H
    lambda b: b[:10] + struct.pack(">HHHHHHBH", 1, 0, 0, 9, 9, 99, 0, 0) + b[25:],  # label index
])
def test_malformed_side_is_a_packet_error(mutate):
    good = _side_bytes([Region(1, (0, 0, 9, 9), "person", 0.5, ("detection",))])
    assert SideInfo.decode(good, make_meta()).regions[0].box == (0, 0, 9, 9)
    with pytest.raises(PacketError) as e:
        SideInfo.decode(mutate(good), make_meta())
    assert e.value.reason == "bad_side"


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


# -- task container ---------------------------------------------------------------------------


@FAST
@given(st.dictionaries(st.integers(0, 65535), st.binary(max_size=300), max_size=30))
def test_items_round_trip(items):
    packed = pack_items(items)
    assert len(packed) == 2 + sum(6 + len(v) for v in items.values())
    assert unpack_items(packed) == items


@pytest.mark.parametrize("blob", [
    b"",                                            # no count
    b"\x00",                                        # half a count
    b"\x00\x01",                                    # one item announced, none there
    b"\x00\x01\x00\x05\x00\x00\x00\x09abc",         # item runs past the end
    b"\x00\x00junk",                                # trailing bytes
    b"\x00\x01\x00\x05\x00\x00\x00\x01ab",          # trailing after the last item
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
    assert obj["format"] == "discover-stream" and obj["version"] == 1


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
    _meta_obj(version=2),
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
