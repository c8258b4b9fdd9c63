"""Frame reassembly (sdk/reassembly.py) from real coded frames under loss, duplication, reordering,
forgery and memory pressure. Time is a fake clock; nothing sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from discover.sdk.codecs import CODECS
from discover.sdk.framing import codec_input, frame_messages
from discover.sdk.packet import Kind, Packet, decode_packet, fragment, header_size
from discover.sdk.reassembly import FRAGMENT_COST, AssembledFrame, Reassembler
from discover.sdk.regions import Region
from discover.sdk.stream import SideInfo, StreamMeta, pack_items
from discover.sdk.topics import parse_topic
from hypothesis import given, settings
from hypothesis import strategies as st

CLIP = Path(__file__).resolve().parents[2] / "sdk" / "assets" / "sample" / "street.mp4"
PREFIX = "discover"
CAM = "cam1"
TASKS = ["detection", "vehicles"]
N_FRAMES = 8
FIRST = 1000  # first frame index: leaves room below for restarts
MAX_PACKET = 4096
TIMEOUT = 2.0
REGIONS = [
    Region(1, (496, 152, 536, 240), "person", 0.9, ("detection",)),
    Region(2, (632, 232, 688, 328), "car", 0.8, ("vehicles",)),
    Region(3, (240, 216, 288, 312), "person", 0.7, ("detection", "vehicles")),
]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Sent:
    """One coded frame as the edge sent it, and what a sink must get back."""

    index: int
    capture_us: int
    messages: list[tuple[str, bytes]]
    coded: dict
    tasks: dict[str, bytes]  # expected task payloads (pack_items of that task's regions)

    def of(self, substream: str) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in self.messages if t.endswith("/" + substream)]


def make_meta(camera: str = CAM) -> StreamMeta:
    codec = CODECS.create("classical")
    return StreamMeta(camera=camera, width=768, height=576, fps=10.0, tasks=list(TASKS),
                      labels=["object", "person", "car"], codec=codec.descriptor(),
                      rest_interval=4)


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    out = []
    with av.open(str(CLIP)) as c:
        for i, f in enumerate(c.decode(video=0)):
            out.append(f.to_ndarray(format="bgr24"))
            if i + 1 == N_FRAMES:
                break
    return out


def code_stream(clip, camera: str = CAM, first: int = FIRST) -> list[Sent]:
    meta = make_meta(camera)
    codec = CODECS.create(meta.codec["config"])
    out = []
    for k, frame in enumerate(clip):
        index, capture_us = first + k, 1_700_000_000_000_000 + k * 100_000
        coded = codec.compress(frame, REGIONS, send_rest=k % 4 == 0)
        msgs = frame_messages(PREFIX, meta, index, capture_us, REGIONS, coded,
                              max_packet=MAX_PACKET, intra=k == 0)
        tasks = {t: pack_items({r.rid: coded["regions"][r.rid] for r in REGIONS if t in r.tasks})
                 for t in TASKS}
        out.append(Sent(index, capture_us, msgs, coded, tasks))
    return out


@pytest.fixture(scope="module")
def stream(clip) -> list[Sent]:
    s = code_stream(clip)
    # the fixture is only useful if substreams really fragment and rest comes and goes
    assert len(s[0].of("rest")) > 3 and s[1].of("rest") == []
    assert len(s[0].of("side")) >= 1 and len(s[0].of("task/detection")) >= 1
    return s


def reassembler(clock=None, meta=None, **kw) -> tuple[Reassembler, FakeClock]:
    clock = clock or FakeClock()
    metas = {CAM: meta or make_meta()} if meta is not False else {}
    r = Reassembler(lambda cam: metas.get(cam) or (make_meta(cam) if cam != CAM else None),
                    timeout_s=TIMEOUT, clock=clock, **kw)
    r._test_metas = metas  # lets a test publish the meta later
    return r, clock


def push(r: Reassembler, topic: str, data: bytes) -> bool:
    parts = parse_topic(PREFIX, topic)
    assert parts is not None
    return r.push(data, parts.camera, parts.channel)


def push_all(r: Reassembler, msgs) -> None:
    for t, p in msgs:
        push(r, t, p)


def all_messages(stream) -> list[tuple[str, bytes]]:
    return [m for s in stream for m in s.messages]


def check_frame(f: AssembledFrame, s: Sent, *, tasks=TASKS, rest=True) -> None:
    """A delivered frame carries exactly the bytes the edge coded."""
    assert (f.camera, f.frame_index, f.capture_us) == (CAM, s.index, s.capture_us)
    assert f.complete
    assert f.tasks == {t: s.tasks[t] for t in tasks}
    assert f.rest == (s.coded["rest"] if rest else None)
    side = SideInfo.decode(f.side, make_meta())
    assert side.codec_data == s.coded["side"]
    assert [(r.rid, r.box, r.label, r.tasks) for r in side.regions] == [
        (r.rid, r.box, r.label, r.tasks) for r in REGIONS]
    assert f.wire_bytes == sum(len(p) for t, p in s.messages if _wanted(_sub(t), tasks, rest))


def _sub(topic: str) -> str:
    parts = parse_topic(PREFIX, topic)
    assert parts is not None
    return parts.channel


def dec(topic: str, packet: bytes) -> Packet:
    """A packet as the sink reads it: with the camera and substream of its topic."""
    return decode_packet(packet, CAM, _sub(topic))


def _wanted(sub: str, tasks, rest: bool) -> bool:
    return sub == "side" or (sub == "rest" and rest) or (sub.startswith("task/") and sub[5:] in tasks)


# -- the good path ----------------------------------------------------------------------------


def test_in_order_stream_comes_out_complete(stream):
    r, _ = reassembler()
    out = []
    for s in stream:
        push_all(r, s.messages)
        out += r.pop_ready()
        assert out[-1].frame_index == s.index  # each frame as soon as its last packet came
    assert [f.frame_index for f in out] == [s.index for s in stream]
    for f, s in zip(out, stream, strict=True):
        check_frame(f, s)
    assert out[0].flags & 1 and not out[1].flags & 1  # the intra flag travels
    assert r.counters["frames_complete"] == N_FRAMES
    assert r.counters["dropped_packets"] == 0 and r.counters["duplicates"] == 0
    assert r.counters["packets"] == len(all_messages(stream))
    assert r.counters["bytes"] == sum(len(p) for _, p in all_messages(stream))
    assert r.stored_bytes == 0 and r.pending_frames == 0


def test_reassembled_frame_decodes_like_the_coded_one(stream):
    r, _ = reassembler()
    push_all(r, stream[0].messages)
    (f,) = r.pop_ready()
    meta = make_meta()
    coded, side = codec_input(f, meta)
    codec = CODECS.create(meta.codec["config"])
    via_wire = codec.decompress(coded)
    direct = codec.decompress({**stream[0].coded, "table": REGIONS, "size": (768, 576)})
    assert via_wire["errors"] == {} and via_wire["has_rest"]
    assert np.array_equal(via_wire["x_hat"], direct["x_hat"])


@settings(max_examples=25, deadline=None)
@given(rnd=st.randoms(use_true_random=False), dup_share=st.floats(0, 0.5))
def test_shuffled_and_duplicated_across_frames(stream, rnd, dup_share):
    msgs = all_messages(stream)
    dups = [m for m in msgs if rnd.random() < dup_share]
    mixed = msgs + dups
    rnd.shuffle(mixed)
    r, _ = reassembler()
    push_all(r, mixed)
    out = r.pop_ready()
    assert [f.frame_index for f in out] == [s.index for s in stream]
    for f, s in zip(out, stream, strict=True):
        check_frame(f, s)
    assert r.counters["duplicates"] == len(dups)
    assert r.counters["dropped_packets"] == 0
    assert r.stored_bytes == 0 and r.pending_frames == 0
    assert r.pop_ready(flush=True) == []  # nothing comes out twice


@settings(max_examples=25, deadline=None)
@given(rnd=st.randoms(use_true_random=False), every=st.integers(1, 40))
def test_popping_while_packets_arrive_keeps_order_and_never_repeats(stream, rnd, every):
    msgs = all_messages(stream)
    rnd.shuffle(msgs)
    r, _ = reassembler()
    by_index = {s.index: s for s in stream}
    out: list[AssembledFrame] = []
    delivered_max = -1
    late_frames = set()
    for n, (t, p) in enumerate(msgs, 1):
        idx = dec(t, p).frame_index
        if idx <= delivered_max:
            late_frames.add(idx)
        push(r, t, p)
        if n % every == 0:
            got = r.pop_ready()
            out += got
            if got:
                delivered_max = got[-1].frame_index
    out += r.pop_ready(flush=True)
    idx = [f.frame_index for f in out]
    assert idx == sorted(set(idx))  # strictly increasing: in order, once
    for f in out:
        check_frame(f, by_index[f.frame_index])  # never a half frame under a fixed clock
    # a frame is missing only if some packet of it came after a later frame was delivered
    assert set(by_index) - set(idx) <= late_frames
    assert r.stored_bytes == 0 and r.pending_frames == 0


# -- loss and timeouts ------------------------------------------------------------------------


@pytest.mark.parametrize("lost", ["task/detection", "rest", "first-fragment-of-rest"])
def test_frame_missing_a_substream_comes_out_partial_after_the_timeout(stream, lost):
    r, clock = reassembler()
    victim = stream[0]  # frame 0 carries rest
    for s in stream:
        for t, p in s.messages:
            if s is victim:
                if lost == "first-fragment-of-rest" and p == victim.of("rest")[0][1]:
                    continue
                if t.endswith("/" + lost):
                    continue
            push(r, t, p)
    assert r.pop_ready() == []  # frame 0 holds the line; later frames wait behind it
    assert r.pending_frames == N_FRAMES
    clock.t += TIMEOUT  # not yet past the timeout
    assert r.pop_ready() == []
    clock.t += 0.01
    out = r.pop_ready()
    assert [f.frame_index for f in out] == [s.index for s in stream]
    first = out[0]
    assert not first.complete and first.side is not None
    if lost == "task/detection":
        assert set(first.tasks) == {"vehicles"} and first.rest == victim.coded["rest"]
    else:
        assert first.rest is None and set(first.tasks) == set(TASKS)
    for f, s in zip(out[1:], stream[1:], strict=True):
        check_frame(f, s)
    assert r.counters["frames_partial"] == 1 and r.counters["frames_complete"] == N_FRAMES - 1
    assert r.stored_bytes == 0


def test_partial_frame_still_decodes_its_regions(stream):
    r, clock = reassembler()
    push_all(r, [m for m in stream[1].messages if "/task/detection" not in m[0]])
    clock.t += TIMEOUT + 1
    (f,) = r.pop_ready()
    coded, _ = codec_input(f, make_meta())
    out = CODECS.create("classical").decompress(coded)
    assert set(out["region_pixels"]) == {2, 3}  # the vehicles task's regions
    assert out["errors"] == {}


def test_frame_without_side_is_dropped_and_counted(stream):
    r, clock = reassembler()
    for s in stream[:3]:
        push_all(r, [m for m in s.messages if not (s is stream[1] and m[0].endswith("/side"))])
    out = r.pop_ready()
    assert [f.frame_index for f in out] == [stream[0].index]
    clock.t += TIMEOUT + 0.1
    out = r.pop_ready()
    assert [f.frame_index for f in out] == [stream[2].index]
    assert r.counters["frames_dropped"] == 1
    assert r.stored_bytes == 0 and r.pending_frames == 0


def test_flush_releases_everything_pending(stream):
    r, _ = reassembler()
    push_all(r, [m for m in stream[0].messages if "/rest" not in m[0]])
    push_all(r, stream[1].messages)
    push_all(r, [m for m in stream[2].messages if not m[0].endswith("/side")])
    assert r.pop_ready() == []
    out = r.pop_ready(flush=True)
    assert [(f.frame_index, f.complete) for f in out] == [(stream[0].index, False),
                                                          (stream[1].index, True)]
    assert r.counters["frames_dropped"] == 1 and r.stored_bytes == 0


def test_frames_wait_for_the_stream_descriptor(stream):
    r, clock = reassembler(meta=False)
    push_all(r, stream[0].messages)
    assert r.pop_ready() == []  # cannot judge completeness without the task list
    r._test_metas[CAM] = make_meta()
    (f,) = r.pop_ready()
    check_frame(f, stream[0])
    # without a descriptor until the timeout, the frame is dropped
    r2, clock2 = reassembler(meta=False)
    push_all(r2, stream[1].messages)
    clock2.t += TIMEOUT + 1
    assert r2.pop_ready() == []
    assert r2.counters["frames_dropped"] == 1 and r2.stored_bytes == 0


# -- forged, misrouted, unwanted --------------------------------------------------------------


def test_a_packet_on_another_kinds_topic_is_dropped(stream):
    r, _ = reassembler()
    (t, side), *_ = stream[0].of("side")
    assert r.push(side, CAM, "rest") is False
    assert r.push(side, CAM, "task/detection") is False
    t_det, det = stream[0].of("task/detection")[0]
    assert r.push(det, CAM, "side") is False
    assert r.push(det, CAM, "meta") is False
    assert r.counters["drop_topic_mismatch"] == 4
    assert r.counters["dropped_packets"] == 4
    assert r.pending_frames == 0 and r.stored_bytes == 0
    assert r.push(side, CAM, "side") is True  # the same packet on the right topic is fine
    assert r.push(det, CAM, "task/detection") is True


def test_the_topic_names_camera_and_task_of_an_unsigned_packet(stream):
    """Format 2 does not repeat the topic: an unsigned packet moved to another camera's or
    task's topic is that camera's or task's (only a key tells, test_security.py)."""
    r, _ = reassembler()
    (_, side), *_ = stream[0].of("side")
    _, det = stream[0].of("task/detection")[0]
    assert r.push(side, "cam2", "side") is True
    assert r.push(det, "cam2", "task/vehicles") is True
    (f,) = r.pop_ready(flush=True)
    assert f.camera == "cam2" and set(f.tasks) == {"vehicles"}


def test_unwanted_substreams_are_not_stored(stream):
    r, _ = reassembler(tasks=["detection"], rest=False)
    stored = 0
    for t, p in stream[0].messages:
        sub = _sub(t)
        expect = sub in ("side", "task/detection")
        assert push(r, t, p) is expect
        stored += len(dec(t, p).payload) + FRAGMENT_COST if expect else 0
    assert r.stored_bytes == stored
    assert r.counters["unwanted"] == len(stream[0].of("task/vehicles")) + len(stream[0].of("rest"))
    (f,) = r.pop_ready()
    check_frame(f, stream[0], tasks=["detection"], rest=False)
    assert r.stored_bytes == 0


@settings(max_examples=80, deadline=None)
@given(blob=st.binary(max_size=200))
def test_garbage_is_counted_never_raised(blob):
    r, _ = reassembler()
    assert r.push(blob, CAM, "side") is False
    assert r.counters["dropped_packets"] == 1
    (reason,) = [k for k in r.counters if k.startswith("drop_")]
    assert reason in {"drop_truncated", "drop_bad_magic", "drop_bad_version",
                      "drop_bad_checksum", "drop_bad_field", "drop_topic_mismatch"}


def test_corrupted_packets_of_a_real_stream_are_dropped(stream):
    r, clock = reassembler()
    rnd = random.Random(7)
    corrupted = 0
    for t, p in stream[0].messages:
        if rnd.random() < 0.3:
            b = bytearray(p)
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
            assert push(r, t, bytes(b)) is False
            corrupted += 1
        push(r, t, p)  # the retransmission
    assert corrupted > 0 and r.counters["dropped_packets"] == corrupted
    (f,) = r.pop_ready()
    check_frame(f, stream[0])


def test_inconsistent_fragments_are_dropped(stream):
    r, _ = reassembler()
    s = stream[0]
    (t, side), *_ = s.of("side")
    assert push(r, t, side)
    # same frame, same substream, other fragment count
    rest_other = fragment(CAM, s.index, s.capture_us, Kind.REST, "", b"x" * 10_000, max_packet=2000)
    rest_real = s.of("rest")
    assert len(rest_other) != len(rest_real)
    assert push(r, rest_real[0][0], rest_real[0][1])
    assert push(r, rest_real[0][0], rest_other[1]) is False
    # same frame index, other capture time
    other_time = fragment(CAM, s.index, s.capture_us + 1, Kind.TASK, "detection", b"abc")[0]
    assert push(r, s.of("task/detection")[0][0], other_time) is False
    assert r.counters["drop_inconsistent"] == 2


# -- order, restarts, bounds ------------------------------------------------------------------


def test_late_packets_within_the_window_are_dropped(stream):
    r, _ = reassembler()
    for s in stream[:4]:
        push_all(r, s.messages)
    assert len(r.pop_ready()) == 4
    assert push(r, *stream[1].of("side")[0]) is False  # a late duplicate of a delivered frame
    assert push(r, *stream[3].of("task/vehicles")[0]) is False
    assert r.counters["drop_late"] == 2
    assert r.counters["stream_restarts"] == 0 and r.pending_frames == 0


def test_stream_restart_far_below_is_accepted(clip, stream):
    r, _ = reassembler()
    for s in stream[:3]:
        push_all(r, s.messages)
    assert len(r.pop_ready()) == 3
    push_all(r, stream[3].messages[1:])  # the old stream's last frame never completes
    restarted = code_stream(clip[:2], first=0)  # the edge restarted its frame numbering
    for s in restarted:
        push_all(r, s.messages)
    out = r.pop_ready()
    assert [f.frame_index for f in out] == [0, 1]
    for f, s in zip(out, restarted, strict=True):
        check_frame(f, s)
    assert r.counters["stream_restarts"] == 1 and r.counters["drop_late"] == 0
    # every frame seen is accounted for: 5 complete, the unfinished old one dropped
    assert r.counters["frames_complete"] == 5 and r.counters["frames_dropped"] == 1
    assert r.stored_bytes == 0 and r.pending_frames == 0


def test_reorder_window_is_the_boundary_between_late_and_restart(stream):
    window = 5
    r, _ = reassembler(reorder_window=window)
    push_all(r, stream[0].messages)
    r.pop_ready()
    base, cap = stream[0].index, stream[0].capture_us
    just_late = fragment(CAM, base - window, cap, Kind.SIDE, "", b"s")[0]
    restart = fragment(CAM, base - window - 1, cap, Kind.SIDE, "", b"s")[0]
    assert r.push(just_late, CAM, "side") is False and r.counters["drop_late"] == 1
    assert r.push(restart, CAM, "side") is True and r.counters["stream_restarts"] == 1


def test_max_frames_evicts_the_oldest(stream):
    r, _ = reassembler(max_frames=3)
    for s in stream[:6]:
        push_all(r, [m for m in s.messages if not m[0].endswith("/side")])  # nothing completes
        assert r.pending_frames <= 3
    assert r.counters["frames_evicted"] == 3
    # the evicted frames are gone: their late side packets are dropped, not resurrected
    assert push(r, *stream[0].of("side")[0]) is False and r.counters["drop_late"] == 1
    for s in stream[3:6]:
        push_all(r, s.of("side"))
    out = r.pop_ready()
    assert [f.frame_index for f in out] == [s.index for s in stream[3:6]]
    for f, s in zip(out, stream[3:6], strict=True):
        check_frame(f, s)
    assert r.stored_bytes == 0


def test_max_bytes_bounds_memory(stream):
    sizes = [sum(len(dec(t, p).payload) for t, p in s.messages if not t.endswith("/side"))
             for s in stream[1:4]]
    small = sorted(sizes)
    limit = small[0] + small[1] - 1  # any two frames overflow, any one fits
    assert max(sizes) <= limit
    r, clock = reassembler(max_bytes=limit)
    for s in stream[1:4]:  # frames without rest: similar sizes
        for t, p in s.messages:
            if not t.endswith("/side"):
                push(r, t, p)
                assert r.stored_bytes <= limit
        clock.t += 0.01
    assert r.counters["frames_evicted"] == 2 and r.pending_frames == 1
    push_all(r, stream[3].of("side"))
    (f,) = r.pop_ready()
    check_frame(f, stream[3], rest=False)
    assert r.stored_bytes == 0


def synthetic_frame(index: int, size: int, room: int = 200) -> list[tuple[str, bytes]]:
    """A frame with a real side header and a ``size``-byte detection payload in ``room``-byte
    fragments (the reassembler does not look inside task payloads)."""
    meta = make_meta()
    side = SideInfo(768, 576, ("detection",), False, [], b"").encode(meta)
    cap = 1_000 + index
    task = bytes(range(256)) * (size // 256) + bytes(size % 256)
    max_packet = room + header_size(frame_index=index)
    return ([(f"{PREFIX}/{CAM}/side", p) for p in fragment(CAM, index, cap, Kind.SIDE, "", side)]
            + [(f"{PREFIX}/{CAM}/task/detection", p)
               for p in fragment(CAM, index, cap, Kind.TASK, "detection", task,
                                 max_packet=max_packet)])


def test_byte_eviction_of_a_later_frame_does_not_starve_an_earlier_one():
    """Memory pressure evicts the frame seen first; if that is a later frame (reordering),
    the earlier frame still pending must keep taking its packets, and the evicted one must
    not come back as a second, partial frame."""
    a, b = synthetic_frame(10, 1000), synthetic_frame(11, 1000)
    assert len(a) == 6  # side + 5 fragments of 200 bytes
    limit = 1100 + 7 * FRAGMENT_COST  # payload bytes + bookkeeping of up to 7 fragments
    r, clock = reassembler(max_bytes=limit)
    push_all(r, b[:5])  # most of the later frame first: ~820 bytes
    clock.t += 0.01
    push_all(r, a[:2])  # the earlier frame starts: ~1040 bytes, still fits
    assert r.counters["frames_evicted"] == 0
    assert push(r, *a[2]) is True  # over the limit: b, seen first, is evicted
    assert r.counters["frames_evicted"] == 1 and r.stored_bytes <= limit
    for t, p in a[3:]:
        assert push(r, t, p) is True
    out = r.pop_ready()
    assert [(f.frame_index, f.complete) for f in out] == [(10, True)]
    assert len(out[0].tasks["detection"]) == 1000
    assert push(r, *b[5]) is False and r.counters["drop_late"] == 1
    assert r.pop_ready(flush=True) == []
    assert r.stored_bytes == 0


def test_two_cameras_interleaved(clip, stream):
    other = code_stream(clip[:4], camera="cam2", first=5)
    r, _ = reassembler()
    msgs = all_messages(stream[:4]) + all_messages(other)
    random.Random(3).shuffle(msgs)
    push_all(r, msgs)
    out = r.pop_ready()
    assert [f.frame_index for f in out if f.camera == CAM] == [s.index for s in stream[:4]]
    assert [f.frame_index for f in out if f.camera == "cam2"] == [5, 6, 7, 8]
    assert r.counters["frames_complete"] == 8 and r.stored_bytes == 0


def test_reset_camera_forgets_its_frames(stream):
    r, _ = reassembler()
    push_all(r, stream[0].messages[:-1])
    assert r.stored_bytes > 0
    r.reset_camera(CAM)
    assert r.stored_bytes == 0 and r.pending_frames == 0
    push_all(r, stream[0].messages)
    (f,) = r.pop_ready()
    check_frame(f, stream[0])
