"""Recording files (sdk/recording.py): round trip, cut-short files, and files that are not ones."""

from __future__ import annotations

import struct

import pytest
from discover.sdk.errors import DiscoverError
from discover.sdk.packet import Kind, fragment
from discover.sdk.recording import MAGIC, Record, RecordingWriter, read_recording
from hypothesis import given, settings
from hypothesis import strategies as st

REC_HEAD = 8 + 2 + 4 + 1  # >dHIB


def record(path, items) -> RecordingWriter:
    with RecordingWriter(path) as w:
        for t, topic, payload, retain in items:
            w.write(t, topic, payload, retain)
    return w


def test_round_trip_with_real_packets(tmp_path):
    packets = fragment("cam1", 5, 123, Kind.REST, "", bytes(range(256)) * 40, max_packet=2000)
    items = [(1000.0, "discover/cam1/meta", b'{"format":"discover-stream"}', True)]
    items += [(1000.25 + i * 0.1, "discover/cam1/rest", p, False) for i, p in enumerate(packets)]
    path = tmp_path / "a.rec"
    w = record(path, items)
    assert w.records == len(items)
    assert w.bytes == path.stat().st_size == len(MAGIC) + sum(
        REC_HEAD + len(topic.encode()) + len(p) for _, topic, p, _ in items)
    back = list(read_recording(path))
    assert [(r.topic, r.payload, r.retain) for r in back] == [(t, p, k) for _, t, p, k in items]
    # times are relative to the first record, and keep their spacing
    assert back[0].t == 0.0
    for r, (t, *_) in zip(back, items, strict=True):
        assert r.t == pytest.approx(t - 1000.0, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e6, allow_nan=False), st.text(max_size=40),
                          st.binary(max_size=300), st.booleans()), max_size=12))
def test_round_trip_any_records(tmp_path_factory, items):
    path = tmp_path_factory.mktemp("rec") / "x.rec"
    record(path, items)
    back = list(read_recording(path))
    assert [(r.topic, r.payload, r.retain) for r in back] == [(t, p, k) for _, t, p, k in items]
    if items:
        t0 = items[0][0]
        assert [r.t for r in back] == [t - t0 for t, *_ in items]


def test_cut_short_file_reads_up_to_the_last_whole_record(tmp_path):
    items = [(float(i), f"discover/cam1/task/t{i}", bytes([i]) * (10 + 7 * i), i % 2 == 0)
             for i in range(6)]
    path = tmp_path / "full.rec"
    record(path, items)
    data = path.read_bytes()
    ends = []  # file offset where each record ends
    pos = len(MAGIC)
    for _, topic, payload, _ in items:
        pos += REC_HEAD + len(topic.encode()) + len(payload)
        ends.append(pos)
    assert ends[-1] == len(data)
    cut = tmp_path / "cut.rec"
    for n in range(len(MAGIC), len(data) + 1):
        cut.write_bytes(data[:n])
        back = list(read_recording(cut))
        whole = sum(e <= n for e in ends)
        assert [r.payload for r in back] == [p for _, _, p, _ in items[:whole]], n


@pytest.mark.parametrize("content", [b"", b"DSCV", b"DSCVREC2" + b"\x00" * 20, b"\x00" * 64,
                                     b"DC\x01\x01 a packet, not a recording"])
def test_not_a_recording(tmp_path, content):
    path = tmp_path / "x.rec"
    path.write_bytes(content)
    with pytest.raises(DiscoverError, match="not a DISCOVER recording"):
        list(read_recording(path))


def test_missing_file_and_unwritable_path(tmp_path):
    with pytest.raises(DiscoverError, match="cannot read recording"):
        list(read_recording(tmp_path / "missing.rec"))
    with pytest.raises(DiscoverError, match="cannot write recording"):
        RecordingWriter(tmp_path / "no" / "such" / "dir.rec")


def test_corrupt_topic_bytes(tmp_path):
    path = tmp_path / "x.rec"
    path.write_bytes(MAGIC + struct.pack(">dHIB", 0.0, 2, 1, 0) + b"\xff\xfe" + b"x")
    with pytest.raises(DiscoverError, match="corrupt"):
        list(read_recording(path))


def test_record_defaults():
    assert Record(1.0, "t", b"p").retain is False
