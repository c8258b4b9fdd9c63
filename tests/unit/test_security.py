"""Signed streams (sdk/security.py): a keyed sink takes only what the deployment's edges signed.
Real packets of the bundled clip (classical codec), the real sink pipeline and edge agent; each
forgery the issue lists (replayed, relabelled, moved, injected, old-session, swapped meta
labels) is made the way an attacker without the key would make it: edit and fix the CRC."""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from discover.edge.agent import CameraAgent
from discover.edge.config import CameraConfig, EdgeSection
from discover.sdk.codecs import CODECS
from discover.sdk.errors import DiscoverError, PacketError
from discover.sdk.framing import frame_messages
from discover.sdk.packet import FLAG_SIGNED, decode_packet
from discover.sdk.regions import Region
from discover.sdk.security import StreamKey, StreamVerifier, load_key
from discover.sdk.stream import StreamMeta
from discover.sdk.transport.broker import BrokerConfig
from discover.sink.config import SinkSection
from discover.sink.pipeline import SinkPipeline

CLIP = Path(__file__).resolve().parents[2] / "sdk" / "assets" / "sample" / "street.mp4"
CAM, PREFIX = "cam1", "discover"
KEY, OTHER = StreamKey(b"k" * 32), StreamKey(b"o" * 32)
REGIONS = [Region(1, (496, 152, 536, 240), "person", 0.9, ("detection",)),
           Region(2, (240, 216, 288, 312), "car", 0.7, ("detection",))]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    out = []
    with av.open(str(CLIP)) as c:
        for fr in c.decode(video=0):
            out.append(fr.to_ndarray(format="bgr24"))
            if len(out) == 4:
                break
    return out


def make_meta(session: str = "s1", camera: str = CAM) -> StreamMeta:
    return StreamMeta(camera=camera, width=768, height=576, fps=10.0, tasks=["detection"],
                      labels=["object", "person", "car"],
                      codec=CODECS.create("classical").descriptor(), session=session)


def stream(frames, key: StreamKey | None, session: str = "s1", first: int = 0):
    """(meta bytes, [messages of each frame]) as an edge with ``key`` publishes them."""
    codec = CODECS.create("classical")
    meta = make_meta(session)
    signer = key.signer(session) if key else None
    msgs = [frame_messages(PREFIX, meta, first + i, 1000 + i, REGIONS,
                           codec.compress(img, REGIONS, send_rest=False), max_packet=65536,
                           signer=signer) for i, img in enumerate(frames)]
    return meta.to_json(key), msgs


def sink(key: StreamKey | None = KEY) -> SinkPipeline:
    return SinkPipeline(SinkSection(tasks=["detection"], output="none"), PREFIX, key=key)


def run(pipe: SinkPipeline, meta: bytes, msgs) -> int:
    pipe.feed(f"{PREFIX}/{CAM}/meta", meta)
    for frame in msgs:
        for t, p in frame:
            pipe.feed(t, p)
    return pipe.process_ready(flush=True)


def fix_crc(p: bytes) -> bytes:
    return p[:-4] + struct.pack(">I", zlib.crc32(p[:-4]))


# -- the happy path and refusals ------------------------------------------------------------

def test_a_keyed_sink_takes_a_signed_stream(frames):
    pipe = sink()
    assert run(pipe, *stream(frames, KEY)) == len(frames)
    assert pipe.summary()["dropped_packets"] == 0


def test_signing_costs_16_bytes_a_packet(frames):
    _, plain = stream(frames[:1], None)
    _, signed = stream(frames[:1], KEY)
    assert [len(p) + 16 for _, p in plain[0]] == [len(p) for _, p in signed[0]]
    assert all(decode_packet(p, CAM, t.split(f"/{CAM}/", 1)[1]).flags & FLAG_SIGNED
               for t, p in signed[0])


@pytest.mark.parametrize("edge_key, reason", [(None, "unsigned"), (OTHER, "wrong_key")])
def test_a_keyed_sink_refuses_unsigned_and_foreign_streams_with_one_warning(
        frames, caplog, edge_key, reason):
    pipe = sink()
    with caplog.at_level(logging.WARNING, logger="discover.sink.pipeline"):
        for _ in range(3):  # the retained meta comes again on every reconnect
            assert run(pipe, *stream(frames, edge_key)) == 0
    assert pipe.counters[f"meta_{reason}"] == 3 and pipe.frames_out == 0
    assert pipe.reasm.counters["dropped_packets"] == 3 * sum(len(f) for f in stream(frames, None)[1])
    warnings = [r for r in caplog.records if CAM in r.getMessage()]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]  # one for meta, one for packets


def test_without_a_key_everything_works_as_before(frames):
    assert run(sink(key=None), *stream(frames, KEY)) == len(frames)
    assert run(sink(key=None), *stream(frames, None)) == len(frames)


# -- forgeries ------------------------------------------------------------------------------

def _forge(packet: bytes, offset: int, value: bytes) -> bytes:
    b = bytearray(packet)
    b[offset:offset + len(value)] = value
    return fix_crc(bytes(b))


def keyed_sink_recording() -> SinkPipeline:
    pipe = SinkPipeline(SinkSection(tasks=["detection"], output="none"), PREFIX, key=KEY,
                        on_frame=lambda c, i, img: pipe._delivered.append(i))
    pipe._delivered = []
    return pipe


def test_a_replayed_frame_under_a_new_index_is_rejected(frames):
    meta, msgs = stream(frames[:2], KEY)
    pipe = keyed_sink_recording()
    run(pipe, meta, msgs)
    # frame 0's packets again, renumbered 7 (frame_index, a varint, at offset 5): the MAC
    # binds the index
    assert {p[5] for _, p in msgs[0]} == {0}
    replay = [(t, _forge(p, 5, b"\x07")) for t, p in msgs[0]]
    run(pipe, meta, [replay])
    assert pipe._delivered == [0, 1]
    assert pipe.reasm.counters["drop_bad_signature"] == len(replay)


def test_relabelled_and_moved_regions_are_rejected(frames):
    meta, msgs = stream(frames[:1], KEY)
    side_topic, side = msgs[0][0]
    assert side_topic.endswith("/side")
    head = decode_packet(side, CAM, "side")
    start = len(side) - 4 - 16 - len(head.payload)  # payload offset
    table = start + 11  # side header: 11 bytes, then the region table
    relabel = _forge(side, table + 5, b"\x02")  # label index -> "car"
    moved = _forge(side, table + 1, bytes([side[table + 1] + 1]))  # x0 one unit right
    for forged in (relabel, moved):
        pipe = keyed_sink_recording()
        run(pipe, meta, [[(side_topic, forged), *msgs[0][1:]]])
        assert pipe._delivered == [] and pipe.reasm.counters["drop_bad_signature"] == 1


def test_a_packet_moved_to_another_camera_or_substream_is_rejected(frames):
    """Neither camera nor task is in the packet bytes; the MAC binds the topic's. A second
    camera of the deployment (validly signed meta, even the same session id) does not take
    cam1's packets, nor does another task's topic take a detection packet."""
    meta, msgs = stream(frames[:1], KEY)
    pipe = SinkPipeline(SinkSection(tasks=["detection", "vehicles"], output="none"), PREFIX,
                        key=KEY)
    pipe.feed(f"{PREFIX}/cam2/meta", make_meta(camera="cam2").to_json(KEY))
    pipe.feed(f"{PREFIX}/{CAM}/meta", meta)
    moved = [(t.replace(f"/{CAM}/", "/cam2/"), p) for t, p in msgs[0]]
    moved += [(t.replace("/task/detection", "/task/vehicles"), p) for t, p in msgs[0]
              if t.endswith("/task/detection")]
    for t, p in moved:
        assert not pipe.reasm.push(p, *t.split("/", 2)[1:])
    assert pipe.reasm.counters["drop_bad_signature"] == len(moved)
    # the unmoved packets on their own topics are taken
    assert all(pipe.reasm.push(p, *t.split("/", 2)[1:]) for t, p in msgs[0])


def test_an_old_sessions_packets_are_rejected_in_a_new_session(frames):
    _, old = stream(frames[:1], KEY, session="s-old", first=5)
    meta_new, new = stream(frames[1:2], KEY, session="s-new", first=5)
    pipe = keyed_sink_recording()
    run(pipe, meta_new, old)  # captured earlier, replayed after the edge restarted
    assert pipe._delivered == [] and pipe.reasm.counters["drop_bad_signature"] == len(old[0])
    run(pipe, meta_new, new)
    assert pipe._delivered == [5]


def test_an_injected_frame_does_not_win_the_race(frames):
    meta, msgs = stream(frames[:1], KEY)
    _, fake = stream(frames[1:2], None)  # the attacker's frame 0, published first
    pipe = keyed_sink_recording()
    run(pipe, meta, [fake[0], msgs[0]])
    assert pipe._delivered == [0] and pipe.counters["frames_failed"] == 0
    assert pipe.reasm.counters["drop_unsigned"] == len(fake[0])


def test_a_retained_meta_with_labels_swapped_is_rejected(frames):
    meta, msgs = stream(frames[:1], KEY)
    obj = json.loads(meta)
    obj["labels"] = ["object", "car", "person"]
    pipe = keyed_sink_recording()
    run(pipe, json.dumps(obj).encode(), msgs)
    assert pipe.counters["meta_bad_signature"] == 1 and pipe._delivered == []


# -- control requests and the edge ----------------------------------------------------------

@pytest.fixture
def agent(tmp_path) -> CameraAgent:
    cam = CameraConfig(id=CAM, source=str(CLIP), tasks=["detection"])
    edge = EdgeSection(cameras=[cam], codec={"type": "classical"}, grounder={"type": "motion"},
                       refresh_min_interval_s=60.0)
    a = CameraAgent(cam, edge, BrokerConfig(), PREFIX, key=KEY)
    yield a
    a.source.close()


def _control(key: StreamKey | None, session: str) -> bytes:
    req = {"request": "refresh", "camera": CAM, "frame": 3}
    return json.dumps(key.sign_control(req, session) if key else req).encode()


def test_the_edge_honours_one_signed_refresh_per_interval(agent):
    session = agent.meta.session
    agent._on_control("t", _control(None, session), False)
    agent._on_control("t", _control(OTHER, session), False)
    agent._on_control("t", _control(KEY, "another-session"), False)
    assert agent.stats.control["refresh_requests"] == 0
    for _ in range(50):  # a flood of genuine, signed requests
        agent._on_control("t", _control(KEY, session), False)
    c = agent.stats.control
    assert (c["refused_unsigned"], c["refused_wrong_key"], c["refused_stale"]) == (1, 1, 1)
    assert c["refresh_requests"] == 1 and c["rate_limited"] == 49


def test_the_verifier_of_record_and_replay(frames):
    """Keeps a signed stream, refuses an unsigned one and packets before their meta."""
    meta, msgs = stream(frames[:1], KEY)
    v = StreamVerifier(KEY, PREFIX)
    assert {v.check(t, p) for t, p in msgs[0]} == {"unverifiable"}
    assert v.check(f"{PREFIX}/{CAM}/meta", meta) == "ok"
    assert {v.check(t, p) for t, p in msgs[0]} == {"ok"}
    _, plain = stream(frames[:1], None)
    assert {v.check(t, p) for t, p in plain[0]} == {"unsigned"}
    assert v.check(f"{PREFIX}/{CAM}/meta", stream(frames[:1], OTHER)[0]) == "wrong_key"
    with pytest.raises(PacketError, match="wrong_key"):
        StreamMeta.from_json(meta, OTHER)


# -- key files ------------------------------------------------------------------------------

def test_key_files(tmp_path):
    assert load_key(None) is None
    good = tmp_path / "k"
    good.write_text("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0\n")
    assert load_key(good).kid == load_key(str(good)).kid
    short = tmp_path / "short"
    short.write_text("tiny")
    with pytest.raises(DiscoverError, match="at least 16"):
        load_key(short)
    with pytest.raises(DiscoverError, match="cannot read key file"):
        load_key(tmp_path / "missing")


def test_a_resolution_change_mid_stream_is_one_clear_error(agent, frames):
    """It crashed the edge with an IndexError in the temporal coder before."""
    agent.step(frames[0], 0, 1000)
    with pytest.raises(DiscoverError, match=r"changed resolution mid-stream, from 768x576 to "
                                            r"384x288 at frame 1; restart the edge"):
        agent.step(np.ascontiguousarray(frames[1][::2, ::2]), 1, 2000)
