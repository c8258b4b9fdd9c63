"""A rANS decoder that cannot read outside its input, for compressai's bitstream format.

compressai's C++ ``RansDecoder`` trusts its input: a symbol equal to a row's last value (the
escape) starts "bypass" decoding, whose length comes from the stream itself, so a forged
payload can make it read megabytes past its buffer (a segfault) or spin for seconds.
:func:`checked_decode` decodes in two steps:

1. The C++ decoder runs on CDF rows with the escape made impossible (a zero-width last
   symbol), so every symbol reads at most one 32-bit word and the zero guard after the payload
   (one word per symbol) bounds every read. Where no decoded symbol is the escape value, the
   result is exactly what the unrestricted decoder gives (they take the same path), which is
   the case for nearly every honest payload.
2. Otherwise this module's pure-Python decoder, which follows the same arithmetic but checks
   every read against the end of the payload (reads past it see zero words, as the guard
   gives, at most ``GUARD_WORDS`` of them) and rejects a bypass longer than an int32 needs.

Bitstream (compressai ``rans64.h`` + ``rans_interface.cpp``): 32-bit little-endian words, the
first two the 64-bit initial state; ``PRECISION`` bit CDFs; escape values are coded as
``BYPASS`` bit groups.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

PRECISION = 16
BYPASS = 4  # bits per bypass group
MAX_BYPASS_VAL = (1 << BYPASS) - 1
MAX_GROUPS = 32 // BYPASS  # an int32 value needs at most this many groups
RANS_L = 1 << 31
_MASK = (1 << PRECISION) - 1
_U64 = (1 << 64) - 1


class RansError(ValueError):
    """The bytes are not a rANS stream for these indexes."""


def no_escape_rows(rows: Sequence[list[int]], lengths: Sequence[int]) -> tuple[list[list[int]],
                                                                               list[int]]:
    """The rows with one zero-width symbol appended, so the C++ decoder's escape (the last
    symbol) can never be decoded."""
    return [r + [1 << PRECISION] for r in rows], [n + 1 for n in lengths]


def escape_seen(values: np.ndarray, idx: np.ndarray, lengths: Sequence[int],
                offsets: Sequence[int]) -> bool:
    """Whether any decoded value is its row's escape value (``offset + length - 2``)."""
    esc = np.asarray(offsets, np.int64) + np.asarray(lengths, np.int64) - 2
    return bool(np.any(values.astype(np.int64) == esc[idx]))


class _Reader:
    """32-bit little-endian words of ``data``; zeros past the end, at most ``spare`` of them."""

    def __init__(self, data: bytes, spare: int) -> None:
        self.words = np.frombuffer(data, dtype="<u4").tolist()
        self.pos = 0
        self.limit = len(self.words) + spare

    def next(self) -> int:
        if self.pos >= self.limit:
            raise RansError("reads past the end of the payload")
        pos = self.pos
        self.pos += 1
        return self.words[pos] if pos < len(self.words) else 0


def python_decode(data: bytes, idx: Sequence[int], rows: Sequence[list[int]],
                  lengths: Sequence[int], offsets: Sequence[int], spare: int) -> list[int]:
    """Decode ``len(idx)`` symbols with every read checked (slow: about 1 us a symbol)."""
    if len(data) < 8 or len(data) % 4:
        raise RansError("bad length")
    rd = _Reader(data, spare)
    x = rd.next() | rd.next() << 32

    def get_bits(x: int) -> tuple[int, int]:
        val = x & MAX_BYPASS_VAL
        x >>= BYPASS
        if x < RANS_L:
            x = (x << 32 | rd.next()) & _U64
        return val, x

    out = []
    for i in idx:
        cdf, max_value = rows[i], lengths[i] - 2
        cum = x & _MASK
        s = bisect.bisect_right(cdf, cum, 0, lengths[i]) - 1
        if not 0 <= s <= max_value:
            raise RansError("symbol outside its table")
        x = (cdf[s + 1] - cdf[s]) * (x >> PRECISION) + (x & _MASK) - cdf[s]
        if x < RANS_L:
            x = (x << 32 | rd.next()) & _U64
        value = s
        if value == max_value:
            val, x = get_bits(x)
            groups = val
            while val == MAX_BYPASS_VAL:
                val, x = get_bits(x)
                groups += val
                if groups > MAX_GROUPS:
                    raise RansError("escape longer than any int32")
            raw = 0
            for j in range(groups):
                val, x = get_bits(x)
                raw |= val << (j * BYPASS)
            raw = (raw + (1 << 31)) % (1 << 32) - (1 << 31)  # int32, as the C++ holds it
            value = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + max_value
        out.append(value + offsets[i])
    return out
