"""Unsigned LEB128 varints: the compact integers of the side table, the task container and
the learned codec's region headers (most values there are small: region ids, cell counts)."""

from __future__ import annotations

MAX_BYTES = 5  # enough for 32-bit values


def put(out: bytearray, value: int) -> None:
    """Append ``value`` (0 <= value < 2**35) as 7-bit groups, low group first."""
    if value < 0:
        raise ValueError(f"varint of a negative number ({value})")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def get(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; ValueError if truncated or too long."""
    value = shift = 0
    for i in range(MAX_BYTES):
        if pos + i >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ValueError(f"varint longer than {MAX_BYTES} bytes")
