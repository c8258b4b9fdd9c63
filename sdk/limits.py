"""Bounds on what a stream may declare, checked before anything is allocated or parsed.

Everything a packet or a ``meta`` says about sizes comes from the network; a receiver checks
it against these limits (and the frame size against the stream's own ``meta``) first, so a
forged 495-byte packet cannot make a sink allocate a 65535 x 65535 frame, recurse through a
deeply nested JSON document or loop over 4096 regions.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

MAX_JSON_BYTES = 64 * 1024  #: a meta or control message
MAX_JSON_DEPTH = 8  #: nesting of objects and lists (the meta needs 4)
MAX_LABELS = 4096
MAX_FPS = 1000.0
MAX_REGIONS = 256  #: regions in one side table (sink.max_regions; the edge's default cap)
MAX_FRAME_PIXELS = 3840 * 2160  #: sink.max_frame_pixels: a larger descriptor is refused

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def json_depth(data: bytes) -> int:
    """Deepest nesting of ``[``/``{`` outside strings (a linear scan, no recursion)."""
    bare = _STRING.sub(b"", data)
    if not bare:
        return 0
    steps = _OPEN[np.frombuffer(bare, np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def loads_bounded(data: bytes, what: str, *, max_bytes: int = MAX_JSON_BYTES,
                  max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` after checking size and depth; ValueError naming ``what`` if over."""
    if len(data) > max_bytes:
        raise ValueError(f"{what} of {len(data)} bytes, at most {max_bytes}")
    if json_depth(bytes(data)) > max_depth:
        raise ValueError(f"{what} nested deeper than {max_depth}")
    return json.loads(data)


def finite_positive(value: Any, upper: float) -> bool:
    """A real number in (0, upper]: not bool, NaN, infinite, zero or negative."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and 0 < value <= upper)
