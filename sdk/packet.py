"""The DISCOVER packet: one MQTT message carrying one fragment of one substream of one frame.

Wire layout, version 1 (all integers big-endian; documented in docs/packet-format.md)::

    offset size field
    0      2    magic            b"DC"
    2      1    version          1
    3      1    kind             1 side, 2 task, 3 rest
    4      1    flags            bit 0: intra / refresh frame; bit 1: signed (mac present)
    5      1    camera_len       C (1..64)
    6      1    name_len         N (0..64; the task name for kind=task, else 0)
    7      4    frame_index      uint32
    11     8    capture_us       uint64, microseconds since the Unix epoch at capture
    19     2    fragment_index   uint16, < fragment_count
    21     2    fragment_count   uint16, >= 1
    23     4    payload_len      L, bytes of this fragment's payload
    27     C    camera           UTF-8
    27+C   N    name             UTF-8
    27+C+N L    payload
    ...    16   mac              only with flags bit 1 (signed): truncated HMAC-SHA256
    ...    4    crc32            zlib.crc32 of every byte before it

A substream payload larger than one packet allows is split into ``fragment_count`` fragments of
equal size (the last one shorter); reassembly concatenates them in index order.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from discover.sdk.errors import PacketError
from discover.sdk.security import MAC_SIZE

MAGIC = b"DC"
VERSION = 1
DEFAULT_MAX_PACKET = 128 * 1024  # common managed-broker message limit
MAX_NAME = 64
MAX_FRAGMENTS = 65535

_FIXED = struct.Struct(">2sBBBBBIQHHI")
_CRC = struct.Struct(">I")
FIXED_SIZE = _FIXED.size  # 27
TRAILER_SIZE = _CRC.size


class Kind(IntEnum):
    """Substream kinds."""

    SIDE = 1
    TASK = 2
    REST = 3


FLAG_INTRA = 0x01
FLAG_SIGNED = 0x02  # a MAC_SIZE-byte MAC (sdk/security.py) sits between payload and CRC

Signer = Callable[[bytes], bytes]  # packet bytes before the MAC -> MAC


@dataclass(frozen=True, slots=True)
class Packet:
    """A parsed packet (one fragment)."""

    camera: str
    frame_index: int
    capture_us: int
    kind: Kind
    name: str
    fragment_index: int
    fragment_count: int
    payload: bytes
    flags: int = 0
    mac: bytes = b""  # the packet's MAC when FLAG_SIGNED is set

    @property
    def substream(self) -> str:
        """Substream id as used in topics: ``side``, ``rest`` or ``task/<name>``."""
        return f"task/{self.name}" if self.kind is Kind.TASK else self.kind.name.lower()


def _check_name(value: str, what: str, allow_empty: bool) -> bytes:
    raw = value.encode("utf-8")
    if (not raw and not allow_empty) or len(raw) > MAX_NAME:
        raise ValueError(f"{what} must be 1..{MAX_NAME} bytes of UTF-8, got {value!r}")
    return raw


def header_size(camera: str, name: str = "", signed: bool = False) -> int:
    """Bytes a packet adds around its payload for this camera and substream name."""
    return (FIXED_SIZE + len(camera.encode()) + len(name.encode()) + TRAILER_SIZE
            + (MAC_SIZE if signed else 0))


def signed_part(data: bytes) -> bytes:
    """The bytes a signed packet's MAC covers (everything before the MAC)."""
    return data[: len(data) - TRAILER_SIZE - MAC_SIZE]


def encode_packet(p: Packet, signer: Signer | None = None) -> bytes:
    """Serialise one packet; with ``signer`` it carries a MAC (FLAG_SIGNED)."""
    cam = _check_name(p.camera, "camera id", allow_empty=False)
    name = _check_name(p.name, "substream name", allow_empty=True)
    if (p.kind is Kind.TASK) != bool(name):
        raise ValueError("task packets carry a task name, side and rest packets none")
    if not 0 <= p.fragment_index < p.fragment_count <= MAX_FRAGMENTS:
        raise ValueError("fragment index must be in [0, fragment_count)")
    flags = (p.flags | FLAG_SIGNED) if signer else (p.flags & ~FLAG_SIGNED)
    head = _FIXED.pack(
        MAGIC, VERSION, int(p.kind), flags & 0xFF, len(cam), len(name),
        p.frame_index & 0xFFFFFFFF, p.capture_us, p.fragment_index, p.fragment_count,
        len(p.payload),
    )
    body = b"".join((head, cam, name, p.payload))
    if signer is not None:
        body += signer(body)
    return body + _CRC.pack(zlib.crc32(body))


def decode_packet(data: bytes | bytearray | memoryview) -> Packet:
    """Parse and verify one packet; raises :class:`PacketError` with a counter name."""
    data = bytes(data)
    if len(data) < FIXED_SIZE + TRAILER_SIZE:
        raise PacketError("truncated", f"{len(data)} bytes")
    (magic, version, kind, flags, cam_len, name_len, frame, capture_us, frag_i, frag_n,
     payload_len) = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise PacketError("bad_magic")
    if version != VERSION:
        raise PacketError("bad_version", str(version))
    mac_len = MAC_SIZE if flags & FLAG_SIGNED else 0
    expected = FIXED_SIZE + cam_len + name_len + payload_len + mac_len + TRAILER_SIZE
    if len(data) < expected:
        raise PacketError("truncated", f"{len(data)} < {expected} bytes")
    if len(data) > expected:
        raise PacketError("bad_length", f"{len(data)} > {expected} bytes")
    (crc,) = _CRC.unpack_from(data, expected - TRAILER_SIZE)
    if zlib.crc32(memoryview(data)[: expected - TRAILER_SIZE]) != crc:
        raise PacketError("bad_checksum")
    try:
        kind_e = Kind(kind)
    except ValueError:
        raise PacketError("bad_field", f"kind {kind}") from None
    if not (1 <= cam_len <= MAX_NAME and name_len <= MAX_NAME):
        raise PacketError("bad_field", "name length")
    if frag_n == 0 or frag_i >= frag_n:
        raise PacketError("bad_field", f"fragment {frag_i}/{frag_n}")
    if (kind_e is Kind.TASK) != (name_len > 0):
        raise PacketError("bad_field", "task packets carry a name, others none")
    pos = FIXED_SIZE
    try:
        camera = data[pos : pos + cam_len].decode("utf-8")
        name = data[pos + cam_len : pos + cam_len + name_len].decode("utf-8")
    except UnicodeDecodeError:
        raise PacketError("bad_field", "name is not UTF-8") from None
    start = pos + cam_len + name_len
    end = start + payload_len
    return Packet(camera, frame, capture_us, kind_e, name, frag_i, frag_n,
                  data[start:end], flags, data[end : end + mac_len])


def fragment(
    camera: str,
    frame_index: int,
    capture_us: int,
    kind: Kind,
    name: str,
    payload: bytes,
    *,
    flags: int = 0,
    max_packet: int = DEFAULT_MAX_PACKET,
    signer: Signer | None = None,
) -> list[bytes]:
    """Split one substream payload into packets of at most ``max_packet`` bytes each (signed
    by ``signer`` when the deployment has a key)."""
    room = max_packet - header_size(camera, name, signer is not None)
    if room < 64:
        raise ValueError(f"max packet size {max_packet} leaves no room for payload")
    count = max(1, -(-len(payload) // room))
    if count > MAX_FRAGMENTS:
        raise ValueError(f"payload of {len(payload)} bytes needs more than {MAX_FRAGMENTS} packets")
    return [
        encode_packet(Packet(camera, frame_index, capture_us, kind, name, i, count,
                             payload[i * room : (i + 1) * room], flags), signer)
        for i in range(count)
    ]
