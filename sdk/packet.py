"""The DISCOVER packet: one MQTT message carrying one fragment of one substream of one frame.

Wire layout, version 2 (documented in docs/packet-format.md). The camera and the substream
(``side``, ``rest``, ``task/<name>``) are not on the wire: the MQTT topic says them, and the
receiver passes them to :func:`decode_packet`. Neither is the payload length: the message
length gives it. ``varint`` is LEB128 (7 bits a byte, low first, minimal)::

    offset size field
    0      2    magic            b"DC"
    2      1    version          2
    3      1    kind             1 side, 2 task, 3 rest (must agree with the topic)
    4      1    flags            bit 0: intra / refresh frame; bit 1: signed (mac present);
                                 bit 2: fragmented (the two fragment fields present)
    5      1-5  frame_index      varint, < 2**32
    ...    8    capture_us       uint64 big-endian, microseconds since the Unix epoch
    ...    1-3  fragment_index   varint, < fragment_count   } only with flags bit 2; without
    ...    1-3  fragment_count   varint, 2..65535           } it the packet is fragment 0 of 1
    ...    L    payload          the rest up to the MAC / CRC
    ...    16   mac              only with flags bit 1: truncated HMAC-SHA256 over
                                 len(camera) camera len(substream) substream and every byte
                                 before the MAC, so it binds the packet to its topic too
    ...    4    crc32            zlib.crc32 of every byte before it (big-endian)

A substream payload larger than one packet allows is split into ``fragment_count`` fragments of
equal size (the last one shorter); reassembly concatenates them in index order.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from discover.sdk import varint
from discover.sdk.errors import PacketError
from discover.sdk.security import MAC_SIZE

MAGIC = b"DC"
VERSION = 2
DEFAULT_MAX_PACKET = 128 * 1024  # common managed-broker message limit
MAX_NAME = 64
MAX_FRAGMENTS = 65535

_LEAD = struct.Struct(">2sBBB")  # magic, version, kind, flags
_CAPTURE = struct.Struct(">Q")
_CRC = struct.Struct(">I")
TRAILER_SIZE = _CRC.size
#: the smallest packet: lead, a 1-byte frame index, capture time, no payload, CRC
MIN_SIZE = _LEAD.size + 1 + _CAPTURE.size + TRAILER_SIZE


class Kind(IntEnum):
    """Substream kinds."""

    SIDE = 1
    TASK = 2
    REST = 3


FLAG_INTRA = 0x01
FLAG_SIGNED = 0x02  # a MAC_SIZE-byte MAC (sdk/security.py) sits between payload and CRC
FLAG_FRAGMENTED = 0x04  # fragment index and count follow the capture time

Signer = Callable[[bytes], bytes]  # bytes to sign (see mac_input) -> MAC


@dataclass(frozen=True, slots=True)
class Packet:
    """A parsed packet (one fragment); ``camera`` and ``name`` come from its topic."""

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
        return substream_id(self.kind, self.name)


def substream_id(kind: Kind, name: str = "") -> str:
    """The topic's substream id for a kind and task name."""
    return f"task/{name}" if kind is Kind.TASK else kind.name.lower()


def _check_name(value: str, what: str, allow_empty: bool) -> bytes:
    raw = value.encode("utf-8")
    if (not raw and not allow_empty) or len(raw) > MAX_NAME:
        raise ValueError(f"{what} must be 1..{MAX_NAME} bytes of UTF-8, got {value!r}")
    return raw


def _varint(n: int) -> bytes:
    out = bytearray()
    varint.put(out, n)
    return bytes(out)


def _read_varint(data: bytes, pos: int, max_bytes: int) -> tuple[int, int]:
    """(value, next position); a varint longer than ``max_bytes``, cut off by the end of the
    data or not minimal (a trailing zero byte) is a ``bad_field``."""
    try:
        value, nxt = varint.get(data, pos)
    except ValueError:
        raise PacketError("bad_field", "varint") from None
    if nxt - pos > max_bytes or (nxt - pos > 1 and data[nxt - 1] == 0):
        raise PacketError("bad_field", "varint")
    return value, nxt


def header_size(camera: str = "", name: str = "", signed: bool = False, *,
                frame_index: int = 0xFFFFFFFF, fragments: int = MAX_FRAGMENTS) -> int:
    """The most bytes a packet adds around its payload (exact for one fragment; with more,
    for the last fragment index). ``camera`` and ``name`` are not on the wire (they cost
    nothing); the defaults of ``frame_index`` and ``fragments`` give the largest header of
    all (for sizing fragments). :func:`overhead` gives an encoded packet's exact cost."""
    frag = 0 if fragments <= 1 else len(_varint(fragments - 1)) + len(_varint(fragments))
    return (_LEAD.size + len(_varint(frame_index & 0xFFFFFFFF)) + _CAPTURE.size + frag
            + TRAILER_SIZE + (MAC_SIZE if signed else 0))


def mac_input(camera: str, substream: str, signed: bytes) -> bytes:
    """What a packet's MAC covers: the topic's camera and substream (length-prefixed) and
    ``signed``, the packet bytes before the MAC."""
    cam, sub = camera.encode(), substream.encode()
    return bytes((len(cam),)) + cam + bytes((len(sub),)) + sub + signed


def signed_part(data: bytes, camera: str, substream: str) -> bytes:
    """The bytes a signed packet's MAC was computed over (see :func:`mac_input`)."""
    return mac_input(camera, substream, data[: len(data) - TRAILER_SIZE - MAC_SIZE])


def encode_packet(p: Packet, signer: Signer | None = None) -> bytes:
    """Serialise one packet; with ``signer`` it carries a MAC (FLAG_SIGNED) that binds it to
    ``p.camera`` and ``p.substream`` (which are not written)."""
    _check_name(p.camera, "camera id", allow_empty=False)
    name = _check_name(p.name, "substream name", allow_empty=True)
    if (p.kind is Kind.TASK) != bool(name):
        raise ValueError("task packets carry a task name, side and rest packets none")
    if not 0 <= p.fragment_index < p.fragment_count <= MAX_FRAGMENTS:
        raise ValueError("fragment index must be in [0, fragment_count)")
    flags = (p.flags | FLAG_SIGNED) if signer else (p.flags & ~FLAG_SIGNED)
    flags = (flags | FLAG_FRAGMENTED) if p.fragment_count > 1 else (flags & ~FLAG_FRAGMENTED)
    parts = [_LEAD.pack(MAGIC, VERSION, int(p.kind), flags & 0xFF),
             _varint(p.frame_index & 0xFFFFFFFF), _CAPTURE.pack(p.capture_us)]
    if p.fragment_count > 1:
        parts += [_varint(p.fragment_index), _varint(p.fragment_count)]
    body = b"".join((*parts, p.payload))
    if signer is not None:
        body += signer(mac_input(p.camera, p.substream, body))
    return body + _CRC.pack(zlib.crc32(body))


def _topic_kind(substream: str) -> tuple[Kind, str]:
    """(kind, task name) of a topic's substream id; ``topic_mismatch`` if it names none."""
    if substream.startswith("task/") and 0 < len(substream[5:].encode()) <= MAX_NAME:
        return Kind.TASK, substream[5:]
    if substream in ("side", "rest"):
        return Kind[substream.upper()], ""
    raise PacketError("topic_mismatch", f"substream {substream!r}")


def decode_packet(data: bytes | bytearray | memoryview, camera: str, substream: str) -> Packet:
    """Parse and check one packet that arrived on ``camera``'s ``substream`` topic; raises
    :class:`PacketError` with a counter name (``topic_mismatch``: its kind is another
    substream's). A signed packet's MAC is checked by the caller, who has the key."""
    data = bytes(data)
    if len(data) < MIN_SIZE:
        raise PacketError("truncated", f"{len(data)} bytes")
    magic, version, kind, flags = _LEAD.unpack_from(data)
    if magic != MAGIC:
        raise PacketError("bad_magic")
    if version != VERSION:
        raise PacketError("bad_version", str(version))
    end = len(data) - TRAILER_SIZE
    (crc,) = _CRC.unpack_from(data, end)
    if zlib.crc32(memoryview(data)[:end]) != crc:
        raise PacketError("bad_checksum")
    if kind not in Kind.__members__.values():
        raise PacketError("bad_field", f"kind {kind}")
    if not 0 < len(camera.encode()) <= MAX_NAME:
        raise PacketError("bad_topic", f"camera id of {len(camera.encode())} bytes")
    topic_kind, name = _topic_kind(substream)
    if kind != topic_kind:
        raise PacketError("topic_mismatch", f"kind {kind} on {substream!r}")
    frame, pos = _read_varint(data, _LEAD.size, 5)
    if frame > 0xFFFFFFFF:
        raise PacketError("bad_field", "frame index")
    if pos + _CAPTURE.size > end:
        raise PacketError("truncated", "no capture time")
    (capture_us,) = _CAPTURE.unpack_from(data, pos)
    frag_i, frag_n, pos = _fragment_fields(data, pos + _CAPTURE.size, flags)
    mac_len = MAC_SIZE if flags & FLAG_SIGNED else 0
    if end - mac_len < pos:
        raise PacketError("truncated", f"{len(data)} bytes")
    return Packet(camera, frame, capture_us, Kind(kind), name, frag_i, frag_n,
                  data[pos : end - mac_len], flags, data[end - mac_len : end])


def _fragment_fields(data: bytes, pos: int, flags: int) -> tuple[int, int, int]:
    """(fragment index, fragment count, next position) of a packet."""
    if not flags & FLAG_FRAGMENTED:
        return 0, 1, pos
    frag_i, pos = _read_varint(data, pos, 3)
    frag_n, pos = _read_varint(data, pos, 3)
    if not 2 <= frag_n <= MAX_FRAGMENTS or frag_i >= frag_n:
        raise PacketError("bad_field", f"fragment {frag_i}/{frag_n}")
    return frag_i, frag_n, pos


def overhead(data: bytes) -> int:
    """Bytes of one encoded, valid packet that are not payload (what the header costs)."""
    flags = data[4]
    _, pos = _read_varint(data, _LEAD.size, 5)
    _, _, pos = _fragment_fields(data, pos + _CAPTURE.size, flags)
    return pos + TRAILER_SIZE + (MAC_SIZE if flags & FLAG_SIGNED else 0)


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
    room = max_packet - header_size(signed=signer is not None, frame_index=frame_index)
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
