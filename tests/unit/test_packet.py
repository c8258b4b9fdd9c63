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
    FIXED_SIZE,
    FLAG_SIGNED,
    MAGIC,
    MAX_NAME,
    TRAILER_SIZE,
    VERSION,
    Kind,
    Packet,
    decode_packet,
    encode_packet,
    fragment,
    header_size,
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
#: every flag but FLAG_SIGNED, which only a signer sets (test_security.py)
unsigned_flags = st.integers(0, 255).map(lambda f: f & ~FLAG_SIGNED)


@st.composite
def packets(draw) -> Packet:
    kind = draw(st.sampled_from(list(Kind)))
    name = draw(task_names) if kind is Kind.TASK else ""
    count = draw(st.integers(1, 65535))
    return Packet(draw(cameras), draw(frame_indices), draw(capture_times), kind, name,
                  draw(st.integers(0, count - 1)), count, draw(payloads), draw(unsigned_flags))


def raw_packet(*, magic=MAGIC, version=VERSION, kind=1, flags=0, camera=b"cam", name=b"",
               frame=7, capture_us=123, frag_i=0, frag_n=1, payload=b"xyz",
               cam_len=None, name_len=None, payload_len=None, crc=True) -> bytes:
    """A packet built by hand from the documented layout, with a valid CRC unless told."""
    head = struct.pack(">2sBBBBBIQHHI", magic, version, kind, flags,
                       len(camera) if cam_len is None else cam_len,
                       len(name) if name_len is None else name_len,
                       frame, capture_us, frag_i, frag_n,
                       len(payload) if payload_len is None else payload_len)
    body = head + camera + name + payload
    return body + struct.pack(">I", zlib.crc32(body) if crc else 0)


def reason_of(data: bytes) -> str:
    with pytest.raises(PacketError) as e:
        decode_packet(data)
    assert REASON.match(e.value.reason), e.value.reason
    return e.value.reason


# -- layout and round trip --------------------------------------------------------------------


def test_hand_built_packet_matches_documented_layout():
    data = raw_packet(kind=2, flags=1, camera="cam-é".encode(), name=b"detection", frame=4_000_000_000,
                      capture_us=1_700_000_000_000_000, frag_i=2, frag_n=5, payload=b"\x00\x01\x02")
    p = decode_packet(data)
    assert p == Packet("cam-é", 4_000_000_000, 1_700_000_000_000_000, Kind.TASK, "detection", 2, 5,
                       b"\x00\x01\x02", 1)
    assert p.substream == "task/detection"
    assert encode_packet(p) == data  # the encoder writes exactly the documented bytes
    assert len(data) == header_size("cam-é", "detection") + 3
    assert FIXED_SIZE == 27 and TRAILER_SIZE == 4


@pytest.mark.parametrize(("kind", "expected"), [(Kind.SIDE, "side"), (Kind.REST, "rest")])
def test_substream_of_side_and_rest(kind, expected):
    assert decode_packet(encode_packet(Packet("c", 0, 0, kind, "", 0, 1, b""))).substream == expected


@FAST
@given(packets())
def test_encode_decode_round_trip(p):
    data = encode_packet(p)
    assert len(data) == header_size(p.camera, p.name) + len(p.payload)
    q = decode_packet(data)
    assert q == p
    assert decode_packet(bytearray(data)) == p
    assert decode_packet(memoryview(data)) == p


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
    max_packet = header_size(cam, name) + extra
    pkts = fragment(cam, frame, t, kind, name, payload, flags=flags, max_packet=max_packet)
    assert all(len(b) <= max_packet for b in pkts)
    decoded = [decode_packet(b) for b in pkts]
    n = len(decoded)
    assert n == max(1, -(-len(payload) // extra))  # fewest packets that fit
    assert [d.fragment_index for d in decoded] == list(range(n))
    assert {d.fragment_count for d in decoded} == {n}
    assert all((d.camera, d.frame_index, d.capture_us, d.kind, d.name, d.flags)
               == (cam, frame, t, kind, name, flags) for d in decoded)
    assert b"".join(d.payload for d in decoded) == payload
    # equal sizes, the last one shorter (or equal)
    sizes = [len(d.payload) for d in decoded]
    assert all(s == extra for s in sizes[:-1]) and sizes[-1] <= extra


def test_fragment_refuses_a_packet_size_with_no_room():
    with pytest.raises(ValueError):
        fragment("cam", 0, 0, Kind.SIDE, "", b"x" * 10, max_packet=header_size("cam") + 63)
    with pytest.raises(ValueError):  # would need more than 65535 fragments
        fragment("cam", 0, 0, Kind.SIDE, "", b"x" * (64 * 65536), max_packet=header_size("cam") + 64)


def test_empty_payload_is_one_packet():
    (only,) = fragment("cam", 1, 2, Kind.REST, "", b"")
    p = decode_packet(only)
    assert (p.fragment_index, p.fragment_count, p.payload) == (0, 1, b"")


# -- rejection --------------------------------------------------------------------------------


@FAST
@given(packets())
def test_every_truncation_is_rejected_as_truncated(p):
    data = encode_packet(p)
    step = max(1, len(data) // 200)  # every prefix for small packets, a dense sample for large
    for n in list(range(0, len(data), step)) + [len(data) - 1]:
        assert reason_of(data[:n]) == "truncated"


@FAST
@given(packets(), st.data())
def test_any_byte_flip_is_rejected(p, data):
    raw = bytearray(encode_packet(p))
    i = data.draw(st.integers(0, len(raw) - 1), label="byte")
    raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    reason = reason_of(bytes(raw))
    # magic, version and the length fields are judged before the checksum; all else by CRC
    expected = {0: "bad_magic", 1: "bad_magic", 2: "bad_version"}.get(i)
    if expected:
        assert reason == expected
    elif i in (5, 6) or 23 <= i <= 26:
        assert reason in ("truncated", "bad_length")
    else:
        assert reason == "bad_checksum"


@FAST
@given(packets(), st.binary(min_size=1, max_size=50))
def test_trailing_bytes_are_rejected(p, tail):
    assert reason_of(encode_packet(p) + tail) == "bad_length"


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_packet_error(blob):
    try:
        decode_packet(blob)
    except PacketError as e:
        assert REASON.match(e.reason)


@FAST
@given(st.binary(max_size=120))
def test_random_body_after_a_valid_header_prefix(blob):
    """Bytes that pass the magic/version gate reach the deeper checks; still only PacketError."""
    body = MAGIC + bytes([VERSION]) + blob
    data = body + struct.pack(">I", zlib.crc32(body))
    try:
        decode_packet(data)
    except PacketError as e:
        assert REASON.match(e.reason)


@pytest.mark.parametrize(("fields", "reason"), [
    (dict(magic=b"XX"), "bad_magic"),
    (dict(version=2), "bad_version"),
    (dict(version=0), "bad_version"),
    (dict(kind=0), "bad_field"),
    (dict(kind=4), "bad_field"),
    (dict(frag_i=1, frag_n=1), "bad_field"),
    (dict(frag_i=9, frag_n=3), "bad_field"),
    (dict(frag_i=0, frag_n=0), "bad_field"),
    (dict(kind=2, name=b""), "bad_field"),                 # task without a name
    (dict(kind=1, name=b"detection"), "bad_field"),        # side with a name
    (dict(kind=3, name=b"x"), "bad_field"),                # rest with a name
    (dict(camera=b""), "bad_field"),                       # no camera
    (dict(camera=b"c" * 65), "bad_field"),                 # camera too long
    (dict(kind=2, name=b"t" * 65), "bad_field"),           # name too long
    (dict(camera=b"\xff\xfe"), "bad_field"),               # camera not UTF-8
    (dict(kind=2, name=b"\xc3"), "bad_field"),             # name not UTF-8
    (dict(crc=False), "bad_checksum"),
    (dict(payload_len=10), "truncated"),                   # says more than it carries
    (dict(payload_len=1), "bad_length"),                   # says less than it carries
])
def test_forged_packets_are_rejected_with_a_reason(fields, reason):
    assert reason_of(raw_packet(**fields)) == reason


def test_valid_hand_built_packet_is_accepted():
    """The baseline the forged variants above differ from is itself fine."""
    assert decode_packet(raw_packet()).payload == b"xyz"


def test_packet_error_is_a_value_error_with_reason_in_message():
    with pytest.raises(ValueError, match="bad_version: 9"):
        decode_packet(raw_packet(version=9))
