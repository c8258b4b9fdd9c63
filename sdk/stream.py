"""What a stream says about itself: the retained ``meta`` descriptor and each frame's ``side``
header (manifest of substreams sent, region table, codec side data), plus the task substream
container. Binary layouts are documented in docs/packet-format.md.
"""

from __future__ import annotations

import json
import math
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
STREAM_VERSION = 4  # 3: side without the frame size, predicted region table; 4: packet version 2
SIDE_VERSION = 3
MAX_TASKS = 16

SIDE_FLAG_REST = 0x01
SIDE_FLAG_INTRA = 0x02
SIDE_FLAG_PREDICTED = 0x04  # the region table refers to the previous frame's (SideContext)
SIDE_FLAG_SEQ_IDS = 0x08  # region ids are 0..R-1 in table order and not sent
_SIDE_FLAGS = 0x0F
#: a full (unpredicted) region table at least this often, so that a sink that cannot ask for a
#: refresh (a replay, a read-only sink) recovers from a lost frame within this many frames
FULL_TABLE_EVERY = 50


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
    codec's side data (e.g. the hyperprior z or a thumbnail). The frame size is the stream
    descriptor's (it is not repeated in every side)."""

    width: int
    height: int
    tasks_sent: tuple[str, ...]
    rest_sent: bool
    regions: list[Region]
    codec_data: bytes
    intra: bool = False

    def encode(self, meta: StreamMeta, ref: Sequence[Region] | None = None) -> bytes:
        """The side payload; with ``ref`` (the previous frame's table, which the receiver
        decoded) regions are coded as changes to the ones they continue (docs/packet-format.md)."""
        if (self.width, self.height) != (meta.width, meta.height):
            raise ValueError(f"side of a {self.width}x{self.height} frame on a "
                             f"{meta.width}x{meta.height} stream")
        seq = all(r.rid == i for i, r in enumerate(self.regions))
        flags = ((SIDE_FLAG_REST if self.rest_sent else 0) | (SIDE_FLAG_INTRA if self.intra else 0)
                 | (SIDE_FLAG_PREDICTED if ref is not None else 0) | (SIDE_FLAG_SEQ_IDS if seq else 0))
        unit = box_unit([*self.regions, *(ref or ())])
        out = bytearray((SIDE_VERSION, flags))
        varint.put(out, meta.task_bits(self.tasks_sent))
        varint.put(out, len(self.regions))
        out.append(unit)
        table = _TableWriter(meta, unit, ref)
        for r in self.regions:
            if not seq:
                varint.put(out, r.rid)
            table.put(out, r)
        return bytes(out) + self.codec_data

    @classmethod
    def decode(cls, data: bytes, meta: StreamMeta, max_regions: int = MAX_REGIONS,
               ref: Sequence[Region] | None = None) -> SideInfo:
        """Parse a side payload, the region count at most ``max_regions`` (checked before the
        table is read). A predicted table needs ``ref``, the previous frame's regions
        (PacketError ``side_reference`` without it)."""
        try:
            flags, sent, n, unit, pos = _head(data)
            if flags & SIDE_FLAG_PREDICTED and ref is None:
                raise PacketError("side_reference", "the region table continues the previous "
                                  "frame's, which this receiver does not have; the next full "
                                  "table resyncs it")
            if n > max_regions:
                raise ValueError(f"{n} regions, this sink takes at most {max_regions} "
                                 "(sink.max_regions)")
            table = _TableReader(meta, unit, ref if flags & SIDE_FLAG_PREDICTED else None)
            regions = []
            for i in range(n):
                rid = i
                if not flags & SIDE_FLAG_SEQ_IDS:
                    rid, pos = varint.get(data, pos)
                region, pos = table.get(data, pos, rid)
                regions.append(region)
            return cls(meta.width, meta.height, meta.tasks_of(sent), bool(flags & SIDE_FLAG_REST),
                       regions, bytes(data[pos:]), bool(flags & SIDE_FLAG_INTRA))
        except PacketError:
            raise
        except (IndexError, ValueError) as e:
            raise PacketError("bad_side", str(e)) from None


def _head(data: bytes) -> tuple[int, int, int, int, int]:
    """(flags, task bits, region count, box unit, position after the header) of a side."""
    if len(data) < 2:
        raise ValueError("short side header")
    if data[0] != SIDE_VERSION:
        raise ValueError(f"side version {data[0]}, this release reads {SIDE_VERSION}: run "
                         "edge and sink (or replay) with the same DISCOVER release")
    flags = data[1]
    if flags & ~_SIDE_FLAGS:
        raise ValueError(f"unknown side flags {flags:#x}")
    sent, pos = varint.get(data, 2)
    n, pos = varint.get(data, pos)
    unit = data[pos]
    if unit == 0:
        raise ValueError("box unit 0")
    return flags, sent, n, unit, pos + 1


def _zigzag(v: int) -> int:
    return v * 2 if v >= 0 else -v * 2 - 1


def _unzigzag(v: int) -> int:
    return v >> 1 if not v & 1 else -(v + 1) >> 1


def _varint_len(v: int) -> int:
    return max(1, (v.bit_length() + 6) // 7)


class _TableWriter:
    """Region entries of one side: each either new (box, label, score, tasks) or a change to the
    previous frame's region it continues (``code = 1 + (ref << 2 | moved << 1 | rescored)``,
    then the box's corner moves and the score if they changed): a region that stayed put costs
    one byte."""

    def __init__(self, meta: StreamMeta, unit: int, ref: Sequence[Region] | None) -> None:
        self.meta, self.unit = meta, unit
        self.ref = None if ref is None else list(ref)
        self.labels = {label: i for i, label in enumerate(meta.labels)}
        self.used: set[int] = set()
        #: previous regions by (label, tasks), in table order: a region only continues one of
        #: the same label and tasks, so matching looks at those alone (not every pair)
        self.by_kind: dict[tuple[str, frozenset[str]], list[int]] = {}
        for k, p in enumerate(self.ref or ()):
            self.by_kind.setdefault((p.label, frozenset(p.tasks)), []).append(k)

    def put(self, out: bytearray, r: Region) -> None:
        u = self.unit
        new = [r.box[0] // u, r.box[1] // u, (r.box[2] - r.box[0]) // u,
               (r.box[3] - r.box[1]) // u, self.labels[r.label]]
        tail = [self.meta.task_bits(r.tasks)]
        score = _score(r.score)
        if self.ref:
            k = self._match(r)
            if k is not None:
                p = self.ref[k]
                moves = [_zigzag((a - b) // u) for a, b in zip(r.box, p.box, strict=True)]
                moved, rescored = any(moves), score != _score(p.score)
                cost = 1 + sum(map(_varint_len, moves)) * moved + rescored
                if cost < 2 + sum(map(_varint_len, new + tail)):
                    self.used.add(k)
                    varint.put(out, 1 + (k << 2 | moved << 1 | rescored))
                    for m in moves if moved else ():
                        varint.put(out, m)
                    if rescored:
                        out.append(score)
                    return
        if self.ref is not None:
            out.append(0)
        for v in new:
            varint.put(out, v)
        out.append(score)
        varint.put(out, tail[0])

    def _match(self, r: Region) -> int | None:
        """The unused previous region of the same label and tasks nearest ``r`` (sum of corner
        distances), if it overlaps ``r``."""
        assert self.ref is not None
        best, best_d = None, None
        for k in self.by_kind.get((r.label, frozenset(r.tasks)), ()):
            p = self.ref[k]
            if k in self.used:
                continue
            if min(p.box[2], r.box[2]) <= max(p.box[0], r.box[0]) or \
                    min(p.box[3], r.box[3]) <= max(p.box[1], r.box[1]):
                continue
            d = sum(abs(a - b) for a, b in zip(p.box, r.box, strict=True))
            if best_d is None or d < best_d:
                best, best_d = k, d
        return best


class _TableReader:
    """Inverse of :class:`_TableWriter`; every box is checked against the frame."""

    def __init__(self, meta: StreamMeta, unit: int, ref: Sequence[Region] | None) -> None:
        self.meta, self.unit, self.ref = meta, unit, ref

    def get(self, data: bytes, pos: int, rid: int) -> tuple[Region, int]:
        u, meta = self.unit, self.meta
        code = 0
        if self.ref is not None:
            code, pos = varint.get(data, pos)
        if code:
            k, moved, rescored = (code - 1) >> 2, (code - 1) >> 1 & 1, (code - 1) & 1
            if k >= len(self.ref):
                raise ValueError(f"region {rid} continues region {k} of a {len(self.ref)}-"
                                 "region table")
            p = self.ref[k]
            box, label, score, tasks = list(p.box), p.label, p.score, p.tasks
            for i in range(4 if moved else 0):
                m, pos = varint.get(data, pos)
                box[i] += _unzigzag(m) * u
            if rescored:
                score, pos = data[pos] / 255, pos + 1
        else:
            vals = []
            for _ in range(5):
                v, pos = varint.get(data, pos)
                vals.append(v)
            x0, y0, bw, bh, li = vals
            box = [x0 * u, y0 * u, (x0 + bw) * u, (y0 + bh) * u]
            label, score = meta.labels[li], data[pos] / 255
            bits, pos = varint.get(data, pos + 1)
            tasks = meta.tasks_of(bits)
        if not (0 <= box[0] < box[2] <= meta.width and 0 <= box[1] < box[3] <= meta.height):
            raise ValueError(f"region {rid} box outside the frame")
        return Region(rid, (box[0], box[1], box[2], box[3]), label, score, tasks), pos


def _score(s: float) -> int:
    return round(min(max(s, 0.0), 1.0) * 255)


class SideContext:
    """The region table one end last coded or decoded for a camera, which the next frame's
    table is predicted from (one per camera on the edge and on each sink).

    The edge predicts from frame N-1 only when it coded N-1, and sends a full table every
    ``full_every`` frames and after :meth:`reset` (a sink's refresh request); a sink decodes a
    predicted table only when it decoded frame N-1's, so a lost or late frame costs the frames
    up to the next full table (PacketError ``side_reference``: the sink asks for a refresh)."""

    def __init__(self, full_every: int = FULL_TABLE_EVERY) -> None:
        self.full_every = max(1, full_every)
        self.reset()

    def reset(self) -> None:
        self._regions: list[Region] | None = None
        self._frame: int | None = None
        self._since_full = 0
        self._full_next = False

    def request_full(self) -> None:
        """Send the next table in full (a sink asked for a refresh; safe from another thread)."""
        self._full_next = True

    def encode(self, side: SideInfo, meta: StreamMeta, frame_index: int) -> bytes:
        predict = (bool(self._regions) and self._frame == frame_index - 1
                   and self._since_full < self.full_every - 1 and not self._full_next)
        self._full_next = False
        data = side.encode(meta, self._regions if predict else None)
        self._regions, self._frame = list(side.regions), frame_index
        self._since_full = self._since_full + 1 if predict else 0
        return data

    def decode(self, data: bytes, meta: StreamMeta, frame_index: int,
               max_regions: int = MAX_REGIONS) -> SideInfo:
        ref = self._regions if self._frame == frame_index - 1 else None
        self._regions = self._frame = None  # a failed decode leaves nothing to predict from
        side = SideInfo.decode(data, meta, max_regions, ref)
        self._regions, self._frame = side.regions, frame_index
        return side


def box_unit(regions: Sequence[Region]) -> int:
    """The side table's coordinate unit: the largest integer (<= 255) dividing every box
    coordinate; codecs that align boxes to their blocks (the learned codec: 16 px, the video
    codec: 8 px) get 1-byte coordinates."""
    g = math.gcd(*(v for r in regions for v in r.box))
    return g if 0 < g <= 255 else 1


def peek_manifest(side: bytes, tasks: Sequence[str]) -> tuple[set[str], bool]:
    """Substreams a side payload says were sent (task names, rest?) without the full parse."""
    try:
        flags, sent, _, _, _ = _head(side)
    except (IndexError, ValueError) as e:
        raise PacketError("bad_side", str(e)) from None
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
