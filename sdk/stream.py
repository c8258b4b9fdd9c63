"""What a stream says about itself: the retained ``meta`` descriptor and each frame's ``side``
header (manifest of substreams sent, region table, codec side data), plus the task substream
container. Binary layouts are documented in docs/packet-format.md.
"""

from __future__ import annotations

import json
import math
import struct
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from discover.sdk import security, varint
from discover.sdk.errors import PacketError
from discover.sdk.limits import MAX_FPS, MAX_LABELS, MAX_REGIONS, finite_positive, loads_bounded
from discover.sdk.regions import Region
from discover.sdk.security import StreamKey

STREAM_FORMAT = "discover-stream"
STREAM_VERSION = 2  # 2: compact side table, task container and learned-codec region headers
SIDE_VERSION = 2
MAX_TASKS = 16

SIDE_FLAG_REST = 0x01
SIDE_FLAG_INTRA = 0x02

# version, flags, width, height, task bits sent, n_regions, box unit (px)
_SIDE_HEAD = struct.Struct(">BBHHHHB")


def _is_size(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 0xFFFF


def _is_strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


@dataclass
class StreamMeta:
    """The retained per-camera stream descriptor (JSON on ``<prefix>/<camera>/meta``)."""

    camera: str
    width: int
    height: int
    fps: float
    tasks: list[str]
    labels: list[str]
    codec: dict[str, Any]
    grounder: dict[str, Any] = field(default_factory=dict)
    rest_interval: int = 0
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if len(self.tasks) > MAX_TASKS:
            raise ValueError(f"at most {MAX_TASKS} tasks per camera")

    def to_json(self, key: StreamKey | None = None) -> bytes:
        """The descriptor as published; signed (``auth``) when the deployment has a key."""
        body = {"format": STREAM_FORMAT, "version": STREAM_VERSION, **self.__dict__}
        if key is not None:
            body = key.sign("meta", body)
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, key: StreamKey | None = None) -> StreamMeta:
        """Parse and check a descriptor: size and nesting first, then (with ``key``) the
        signature (PacketError ``unsigned`` / ``wrong_key`` / ``bad_signature``), then fields."""
        try:
            obj = loads_bounded(data, "stream descriptor")
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            if key is not None:
                verdict = key.check("meta", obj)
                if verdict != security.OK:
                    raise PacketError(verdict, "stream descriptor")
            obj.pop("auth", None)
            if obj.pop("format") != STREAM_FORMAT:
                raise ValueError("not a DISCOVER stream descriptor")
            version = obj.pop("version")
            if version != STREAM_VERSION:
                raise ValueError(f"stream format version {version}, this release reads version "
                                 f"{STREAM_VERSION}: run edge and sink (or replay) with the same "
                                 f"DISCOVER release")
            meta = cls(**obj)
            if not (isinstance(meta.camera, str) and _is_size(meta.width)
                    and _is_size(meta.height) and isinstance(meta.fps, int | float)
                    and _is_strs(meta.tasks) and _is_strs(meta.labels)
                    and isinstance(meta.codec, dict) and isinstance(meta.grounder, dict)
                    and isinstance(meta.session, str) and len(meta.session) <= 64):
                raise ValueError("fields of the wrong type")
            if not finite_positive(meta.fps, MAX_FPS):
                raise ValueError(f"fps {meta.fps!r}: a finite number in (0, {MAX_FPS:g}]")
            if len(meta.labels) > MAX_LABELS:
                raise ValueError(f"{len(meta.labels)} labels, at most {MAX_LABELS}")
            return meta
        except PacketError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise PacketError("bad_meta", str(e)) from None

    def task_bits(self, tasks: Sequence[str]) -> int:
        bits = 0
        for t in tasks:
            bits |= 1 << self.tasks.index(t)
        return bits

    def tasks_of(self, bits: int) -> tuple[str, ...]:
        return tuple(t for i, t in enumerate(self.tasks) if bits >> i & 1)


@dataclass
class SideInfo:
    """Decoded ``side`` payload: what was sent for this frame, where the regions are, and the
    codec's side data (e.g. the hyperprior z or a thumbnail)."""

    width: int
    height: int
    tasks_sent: tuple[str, ...]
    rest_sent: bool
    regions: list[Region]
    codec_data: bytes
    intra: bool = False

    def encode(self, meta: StreamMeta) -> bytes:
        flags = (SIDE_FLAG_REST if self.rest_sent else 0) | (SIDE_FLAG_INTRA if self.intra else 0)
        label_ix = {label: i for i, label in enumerate(meta.labels)}
        unit = box_unit(self.regions)
        out = bytearray(_SIDE_HEAD.pack(SIDE_VERSION, flags, self.width, self.height,
                                        meta.task_bits(self.tasks_sent), len(self.regions), unit))
        for r in self.regions:
            x0, y0, x1, y1 = r.box
            for v in (r.rid, x0 // unit, y0 // unit, (x1 - x0) // unit, (y1 - y0) // unit,
                      label_ix[r.label]):
                varint.put(out, v)
            out.append(round(min(max(r.score, 0.0), 1.0) * 255))
            varint.put(out, meta.task_bits(r.tasks))
        return bytes(out) + self.codec_data

    @classmethod
    def decode(cls, data: bytes, meta: StreamMeta, max_regions: int = MAX_REGIONS) -> SideInfo:
        """Parse a side payload; the frame size must be the descriptor's and the region count
        at most ``max_regions`` (checked before the table is read)."""
        try:
            version, flags, w, h, sent, n, unit = _SIDE_HEAD.unpack_from(data)
            if version != SIDE_VERSION:
                raise ValueError(f"side version {version}")
            if (w, h) != (meta.width, meta.height):
                raise ValueError(f"frame size {w}x{h}, the stream descriptor says "
                                 f"{meta.width}x{meta.height}")
            if n > max_regions:
                raise ValueError(f"{n} regions, this sink takes at most {max_regions} "
                                 "(sink.max_regions)")
            if unit == 0:
                raise ValueError("box unit 0")
            regions = []
            pos = _SIDE_HEAD.size
            for _ in range(n):
                vals = []
                for _ in range(6):
                    v, pos = varint.get(data, pos)
                    vals.append(v)
                rid, x0, y0, bw, bh, li = vals
                score = data[pos]
                bits, pos = varint.get(data, pos + 1)
                box = (x0 * unit, y0 * unit, (x0 + bw) * unit, (y0 + bh) * unit)
                if not (bw > 0 and bh > 0 and box[2] <= w and box[3] <= h):
                    raise ValueError(f"region {rid} box outside the frame")
                regions.append(Region(rid, box, meta.labels[li], score / 255, meta.tasks_of(bits)))
            return cls(w, h, meta.tasks_of(sent), bool(flags & SIDE_FLAG_REST), regions,
                       bytes(data[pos:]), bool(flags & SIDE_FLAG_INTRA))
        except (struct.error, IndexError, ValueError) as e:
            raise PacketError("bad_side", str(e)) from None


def box_unit(regions: Sequence[Region]) -> int:
    """The side table's coordinate unit: the largest integer (<= 255) dividing every box
    coordinate; codecs that align boxes to their blocks (the learned codec: 16 px) get 1-byte
    coordinates."""
    g = math.gcd(*(v for r in regions for v in r.box))
    return g if 0 < g <= 255 else 1


def peek_manifest(side: bytes, tasks: Sequence[str]) -> tuple[set[str], bool]:
    """Substreams a side payload says were sent (task names, rest?) without the full parse."""
    try:
        _, flags, _, _, sent, _, _ = _SIDE_HEAD.unpack_from(side)
    except struct.error:
        raise PacketError("bad_side", "short side header") from None
    return {t for i, t in enumerate(tasks) if sent >> i & 1}, bool(flags & SIDE_FLAG_REST)


def pack_items(items: Mapping[int, bytes]) -> bytes:
    """Task substream container: varint count, then per item varint region id, varint length,
    the bytes."""
    out = bytearray()
    varint.put(out, len(items))
    for rid, blob in items.items():
        varint.put(out, rid)
        varint.put(out, len(blob))
        out += blob
    return bytes(out)


def unpack_items(data: bytes) -> dict[int, bytes]:
    """Inverse of :func:`pack_items`; raises PacketError on a malformed container."""
    try:
        n, pos = varint.get(data, 0)
        items = {}
        for _ in range(n):
            rid, pos = varint.get(data, pos)
            length, pos = varint.get(data, pos)
            if pos + length > len(data):
                raise ValueError("item runs past the end")
            items[rid] = bytes(data[pos : pos + length])
            pos += length
        if pos != len(data):
            raise ValueError("trailing bytes")
        return items
    except ValueError as e:
        raise PacketError("bad_task_payload", str(e)) from None
