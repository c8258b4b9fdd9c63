"""The wire packet (sdk/packet.py): round trips, fragmentation, and rejection of bad bytes.

Every rejection must be a PacketError whose ``reason`` is a short counter name, because the
reassembler counts drops under ``drop_<reason>`` and must never crash on what a network hands it.
"""

from __future__ import annotations

import re
import struct
import zlib

import pytest
from discover.sdk.errors import PacketError
from discover.sdk.packet import (
    FLAG_FRAGMENTED,
    FLAG_SIGNED,
    MAGIC,
    MAX_NAME,
    MIN_SIZE,
    VERSION,
    Kind,
    Packet,
    decode_packet,
    encode_packet,
    fragment,
    header_size,
    overhead,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REASON = re.compile(r"^[a-z_]{3,24}$")


def _utf8_name(min_bytes: int):
    """Text whose UTF-8 encoding is min_bytes..64 bytes (multi-byte characters included)."""
    return st.text(min_size=min_bytes, max_size=64).filter(
        lambda s: min_bytes <= len(s.encode()) <= MAX_NAME)


cameras = _utf8_name(1)
task_names = _utf8_name(1)
frame_indices = st.integers(0, 2**32 - 1)
capture_times = st.integers(0, 2**64 - 1)
payloads = st.binary(max_size=3000)
#: every flag but FLAG_SIGNED (only a signer sets it, test_security.py) and FLAG_FRAGMENTED
#: (the encoder sets it from the fragment count)
unsigned_flags = st.integers(0, 255).map(lambda f: f & ~(FLAG_SIGNED | FLAG_FRAGMENTED))


@st.composite
def packets(draw) -> Packet:
    kind = draw(st.sampled_from(list(Kind)))
    name = draw(task_names) if kind is Kind.TASK else ""
    count = draw(st.integers(1, 65535))
    return Packet(draw(cameras), draw(frame_indices), draw(capture_times), kind, name,
                  draw(st.integers(0, count - 1)), count, draw(payloads), draw(unsigned_flags))


def varint(n: int) -> bytes:
    """LEB128 as the layout documents it, written independently of the encoder."""
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def raw_packet(*, magic=MAGIC, version=VERSION, kind=1, flags=0, frame=7, capture_us=123,
               frag=None, payload=b"xyz", tail=b"", crc=True) -> bytes:
    """A packet built by hand from the documented layout, with a valid CRC unless told.
    ``frag`` = (index, count) writes the fragment fields (and sets the fragmented flag);
    ``frame`` may be raw bytes to write a malformed varint."""
    frame_b = frame if isinstance(frame, bytes) else varint(frame)
    frag_b = b"" if frag is None else varint(frag[0]) + varint(frag[1])
    flags |= 0 if frag is None else FLAG_FRAGMENTED
    body = (struct.pack(">2sBBB", magic, version, kind, flags) + frame_b
            + struct.pack(">Q", capture_us) + frag_b + payload + tail)
    return body + struct.pack(">I", zlib.crc32(body) if crc else 0)


def topic_of(p: Packet) -> tuple[str, str]:
    return p.camera, p.substream


def reason_of(data: bytes, camera: str = "cam", substream: str = "side") -> str:
    with pytest.raises(PacketError) as e:
        decode_packet(data, camera, substream)
    assert REASON.match(e.value.reason), e.value.reason
    return e.value.reason


# -- layout and round trip --------------------------------------------------------------------


def test_hand_built_packet_matches_documented_layout():
    data = raw_packet(kind=2, flags=1, frame=4_000_000_000, capture_us=1_700_000_000_000_000,
                      frag=(2, 5), payload=b"\x00\x01\x02")
    p = decode_packet(data, "cam-é", "task/detection")
    assert p == Packet("cam-é", 4_000_000_000, 1_700_000_000_000_000, Kind.TASK, "detection", 2, 5,
                       b"\x00\x01\x02", 1 | FLAG_FRAGMENTED)
    assert encode_packet(p) == data  # the encoder writes exactly the documented bytes
    # neither camera nor task name is on the wire; 5 lead + 5 frame + 8 time + 2 fragment + 4 CRC
    assert len(data) == 24 + 3 == header_size(frame_index=4_000_000_000, fragments=5) + 3
    assert overhead(data) == 24


def test_a_single_fragment_packet_of_a_low_frame_is_18_bytes_of_header():
    data = encode_packet(Packet("a-long-camera-name", 100, 1_700_000_000_000_000, Kind.TASK,
                                "detection", 0, 1, b"payload"))
    assert len(data) == 18 + 7 == header_size(frame_index=100, fragments=1) + 7
    assert data == raw_packet(kind=2, frame=100, capture_us=1_700_000_000_000_000,
                              payload=b"payload")
    assert overhead(data) == 18


@pytest.mark.parametrize(("kind", "expected"), [(Kind.SIDE, "side"), (Kind.REST, "rest")])
def test_substream_of_side_and_rest(kind, expected):
    data = encode_packet(Packet("c", 0, 0, kind, "", 0, 1, b""))
    assert decode_packet(data, "c", expected).substream == expected


@FAST
@given(packets())
def test_encode_decode_round_trip(p):
    data = encode_packet(p)
    # header_size is the bound for the largest fragment index; overhead the exact cost
    assert overhead(data) + len(p.payload) == len(data) \
        <= header_size(frame_index=p.frame_index, fragments=p.fragment_count) + len(p.payload)
    flags = p.flags | (FLAG_FRAGMENTED if p.fragment_count > 1 else 0)
    want = Packet(p.camera, p.frame_index, p.capture_us, p.kind, p.name, p.fragment_index,
                  p.fragment_count, p.payload, flags)
    assert decode_packet(data, *topic_of(p)) == want
    assert decode_packet(bytearray(data), *topic_of(p)) == want
    assert decode_packet(memoryview(data), *topic_of(p)) == want


@FAST
@given(packets(), st.sampled_from(["side", "rest", "task/detection", "task/other", "task/",
                                   "meta", "status"]))
def test_a_packet_on_another_kinds_topic_is_refused(p, substream):
    """The kind byte must agree with the topic; which task or camera a packet was for only a
    signed packet's MAC can tell (test_security.py), so a task packet on another task's topic
    reads as that task's."""
    data = encode_packet(p)
    if substream.split("/")[0] == p.substream.split("/")[0] and substream != "task/":
        assert decode_packet(data, "other", substream).substream == substream
    else:
        assert reason_of(data, p.camera, substream) == "topic_mismatch"


@pytest.mark.parametrize("bad", [
    Packet("", 0, 0, Kind.SIDE, "", 0, 1, b""),                       # empty camera
    Packet("x" * 65, 0, 0, Kind.SIDE, "", 0, 1, b""),                 # camera too long
    Packet("é" * 33, 0, 0, Kind.SIDE, "", 0, 1, b""),                 # 66 bytes of UTF-8
    Packet("c", 0, 0, Kind.TASK, "", 0, 1, b""),                      # task without a name
    Packet("c", 0, 0, Kind.REST, "detection", 0, 1, b""),             # rest with a name
    Packet("c", 0, 0, Kind.TASK, "t" * 65, 0, 1, b""),                # name too long
    Packet("c", 0, 0, Kind.SIDE, "", 1, 1, b""),                      # index == count
    Packet("c", 0, 0, Kind.SIDE, "", 0, 0, b""),                      # no fragments
    Packet("c", 0, 0, Kind.SIDE, "", 0, 65536, b""),                  # too many fragments
])
def test_encoder_refuses_packets_the_decoder_would_reject(bad):
    with pytest.raises(ValueError):
        encode_packet(bad)


# -- fragmentation ----------------------------------------------------------------------------


@FAST
@given(cam=cameras, kind=st.sampled_from(list(Kind)), name=task_names,
       payload=st.binary(max_size=5000), extra=st.integers(64, 2000),
       frame=frame_indices, t=capture_times, flags=unsigned_flags)
def test_fragment_then_join_gives_payload_back(cam, kind, name, payload, extra, frame, t, flags):
    name = name if kind is Kind.TASK else ""
    max_packet = header_size(frame_index=frame) + extra
    pkts = fragment(cam, frame, t, kind, name, payload, flags=flags, max_packet=max_packet)
    assert all(len(b) <= max_packet for b in pkts)
    decoded = [decode_packet(b, cam, Packet(cam, 0, 0, kind, name, 0, 1, b"").substream)
               for b in pkts]
    n = len(decoded)
    assert n == max(1, -(-len(payload) // extra))  # fewest packets that fit
    assert [d.fragment_index for d in decoded] == list(range(n))
    assert {d.fragment_count for d in decoded} == {n}
    assert all((d.camera, d.frame_index, d.capture_us, d.kind, d.name, d.flags)
               == (cam, frame, t, kind, name, flags | (FLAG_FRAGMENTED if n > 1 else 0))
               for d in decoded)
    assert b"".join(d.payload for d in decoded) == payload
    # equal sizes, the last one shorter (or equal)
    sizes = [len(d.payload) for d in decoded]
    assert all(s == extra for s in sizes[:-1]) and sizes[-1] <= extra


def test_fragment_refuses_a_packet_size_with_no_room():
    with pytest.raises(ValueError):
        fragment("cam", 0, 0, Kind.SIDE, "", b"x" * 10, max_packet=header_size(frame_index=0) + 63)
    with pytest.raises(ValueError):  # would need more than 65535 fragments
        fragment("cam", 0, 0, Kind.SIDE, "", b"x" * (64 * 65536), max_packet=header_size(frame_index=0) + 64)


def test_empty_payload_is_one_packet():
    (only,) = fragment("cam", 1, 2, Kind.REST, "", b"")
    p = decode_packet(only, "cam", "rest")
    assert (p.fragment_index, p.fragment_count, p.payload) == (0, 1, b"")


# -- rejection --------------------------------------------------------------------------------


@FAST
@given(packets())
def test_every_truncation_is_rejected(p):
    """No length is on the wire: a cut packet fails the length floor or the CRC."""
    data = encode_packet(p)
    step = max(1, len(data) // 200)  # every prefix for small packets, a dense sample for large
    for n in list(range(0, len(data), step)) + [len(data) - 1]:
        want = "truncated" if n < MIN_SIZE else "bad_checksum"
        assert reason_of(data[:n], *topic_of(p)) == want


@FAST
@given(packets(), st.data())
def test_any_byte_flip_is_rejected(p, data):
    raw = bytearray(encode_packet(p))
    i = data.draw(st.integers(0, len(raw) - 1), label="byte")
    raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    reason = reason_of(bytes(raw), *topic_of(p))
    # magic and version are judged before the checksum; all else by the CRC
    assert reason == {0: "bad_magic", 1: "bad_magic", 2: "bad_version"}.get(i, "bad_checksum")


@FAST
@given(packets(), st.binary(min_size=1, max_size=50))
def test_trailing_bytes_are_rejected(p, tail):
    assert reason_of(encode_packet(p) + tail, *topic_of(p)) == "bad_checksum"


@FAST
@given(st.binary(max_size=300), st.sampled_from(["side", "rest", "task/d", "task/", "x"]))
def test_random_bytes_never_raise_anything_but_packet_error(blob, substream):
    try:
        decode_packet(blob, "cam", substream)
    except PacketError as e:
        assert REASON.match(e.reason)


@FAST
@given(st.integers(1, 3), st.binary(max_size=120), st.sampled_from(["side", "rest", "task/d"]))
def test_random_body_after_a_valid_header_prefix(kind, blob, substream):
    """Bytes that pass the magic/version/CRC gates reach the deeper checks; still only
    PacketError."""
    body = MAGIC + bytes([VERSION, kind]) + blob
    data = body + struct.pack(">I", zlib.crc32(body))
    try:
        decode_packet(data, "cam", substream)
    except PacketError as e:
        assert REASON.match(e.reason)


@pytest.mark.parametrize(("fields", "reason"), [
    (dict(magic=b"XX"), "bad_magic"),
    (dict(version=1), "bad_version"),                      # format 1 (names on the wire)
    (dict(version=0), "bad_version"),
    (dict(kind=0), "bad_field"),
    (dict(kind=4), "bad_field"),
    (dict(kind=2), "topic_mismatch"),                      # a task packet on the side topic
    (dict(kind=3), "topic_mismatch"),
    (dict(frag=(1, 1)), "bad_field"),                      # fragmented flag with one fragment
    (dict(frag=(9, 3)), "bad_field"),
    (dict(frag=(0, 0)), "bad_field"),
    (dict(frag=(0, 65536)), "bad_field"),                  # too many fragments
    (dict(frag=(0, 2**21)), "bad_field"),                  # a varint longer than 3 bytes
    (dict(frame=2**32), "bad_field"),                      # frame index past 32 bits
    (dict(frame=b"\x80\x00"), "bad_field"),                 # a varint that is not minimal
    (dict(frame=b"\xff" * 6), "bad_field"),                  # a varint that never ends
    (dict(frame=b"", capture_us=0, payload=b""), "truncated"),  # no room for the capture time
    (dict(flags=FLAG_SIGNED, payload=b""), "truncated"),   # signed but no room for the MAC
    (dict(crc=False), "bad_checksum"),
])
def test_forged_packets_are_rejected_with_a_reason(fields, reason):
    assert reason_of(raw_packet(**fields)) == reason


@pytest.mark.parametrize("camera", ["", "c" * 65, "é" * 33, "c" * 300])
def test_a_topic_camera_id_the_mac_cannot_bind_is_refused(camera):
    """The camera id comes from the topic (a publisher's choice): one outside 1..64 bytes is
    a counted drop, not an error while building the MAC input."""
    assert reason_of(raw_packet(), camera) == "bad_topic"


def test_valid_hand_built_packet_is_accepted():
    """The baseline the forged variants above differ from is itself fine."""
    assert decode_packet(raw_packet(), "cam", "side").payload == b"xyz"


def test_packet_error_is_a_value_error_with_reason_in_message():
    with pytest.raises(ValueError, match="bad_version: 9"):
        decode_packet(raw_packet(version=9), "cam", "side")
