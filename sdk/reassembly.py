"""Rebuild frames from packets that may arrive lost, duplicated, reordered or forged.

::

    packets --push()--> per camera: frame index -> substream -> fragments
                                   |
              side arrived? -------+---> manifest says which substreams were sent
                                   |
    pop_ready() <-- in frame order: complete frames, or after ``timeout_s`` the frame as far as
                    it came (needs side; without side it is dropped and counted)

Memory is bounded: at most ``max_frames`` pending frames per camera and ``max_bytes`` stored in
all (every fragment counted with ``FRAGMENT_COST`` bytes of bookkeeping on top of its payload);
past either the oldest pending frame is evicted and counted. With a ``key`` only packets signed
for the camera's current session are taken (``unsigned``, ``bad_signature``, ``unverifiable``). Malformed packets are dropped
and counted under a reason (``truncated``, ``bad_checksum``, ``topic_mismatch``, ...), never
raised.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from discover.sdk.errors import PacketError
from discover.sdk.packet import FLAG_SIGNED, Kind, Packet, decode_packet, signed_part
from discover.sdk.security import StreamKey
from discover.sdk.stream import StreamMeta, peek_manifest

#: bytes a stored fragment is counted as on top of its payload (the bookkeeping it costs), so
#: a flood of zero-byte fragments meets ``max_bytes`` too
FRAGMENT_COST = 64


@dataclass
class AssembledFrame:
    """One frame's substreams as they arrived (payloads reassembled, not yet decoded)."""

    camera: str
    frame_index: int
    capture_us: int
    side: bytes | None
    tasks: dict[str, bytes]
    rest: bytes | None
    complete: bool
    wire_bytes: int
    arrived: float  # clock time of the last packet
    flags: int = 0


@dataclass
class _Substream:
    count: int
    parts: dict[int, bytes] = field(default_factory=dict)

    def add(self, p: Packet) -> bool | None:
        """Store a fragment: True if new, False if duplicate, None if inconsistent."""
        if p.fragment_count != self.count:
            return None
        if p.fragment_index in self.parts:
            return False
        self.parts[p.fragment_index] = p.payload
        return True

    @property
    def done(self) -> bool:
        return len(self.parts) == self.count

    def join(self) -> bytes:
        return b"".join(self.parts[i] for i in range(self.count))


@dataclass
class _Frame:
    capture_us: int
    first_seen: float
    last_seen: float
    flags: int = 0
    subs: dict[str, _Substream] = field(default_factory=dict)
    stored: int = 0
    wire: int = 0

    def payload(self, key: str) -> bytes | None:
        s = self.subs.get(key)
        return s.join() if s is not None and s.done else None


class Reassembler:
    """Thread-safe frame reassembly for any number of cameras.

    ``meta_for(camera)`` gives the stream descriptor (task names for the side manifest); while
    it returns None, that camera's frames wait (up to the timeout) instead of being judged.
    ``tasks``: task substreams this consumer wants (None: all); ``rest``: whether it wants rest.
    """

    def __init__(
        self,
        meta_for: Callable[[str], StreamMeta | None],
        *,
        tasks: Iterable[str] | None = None,
        rest: bool = True,
        timeout_s: float = 2.0,
        max_frames: int = 64,
        max_bytes: int = 256 * 1024 * 1024,
        reorder_window: int = 64,
        clock: Callable[[], float] = time.monotonic,
        key: StreamKey | None = None,
        on_reject: Callable[[str, str], None] | None = None,
    ) -> None:
        self.meta_for = meta_for
        self.tasks = None if tasks is None else set(tasks)
        self.rest = rest
        self.timeout_s = timeout_s
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.reorder_window = reorder_window
        self.clock = clock
        self.key = key
        self.on_reject = on_reject  # (camera, reason) of a packet refused by the key check
        self.counters: Counter[str] = Counter()
        self._pending: dict[str, dict[int, _Frame]] = {}
        self._last: dict[str, int] = {}
        self._stored = 0
        self._lock = threading.Lock()

    # -- intake -------------------------------------------------------------------------------

    def push(self, data: bytes, camera: str, substream: str) -> bool:
        """Take one packet that arrived on ``camera``'s ``substream`` topic (the packet does not
        repeat them; a signed one's MAC binds them). Returns True if it was stored, False if it
        was dropped (and counted)."""
        with self._lock:
            self.counters["packets"] += 1
            try:
                p = decode_packet(data, camera, substream)
            except PacketError as e:
                return self._drop(e.reason)
            if self.key is not None:
                reason = self._auth(p, data)
                if reason:
                    if self.on_reject is not None:
                        self.on_reject(p.camera, reason)
                    return self._drop(reason)
            if p.kind is Kind.TASK and self.tasks is not None and p.name not in self.tasks:
                self.counters["unwanted"] += 1
                return False
            if p.kind is Kind.REST and not self.rest:
                self.counters["unwanted"] += 1
                return False
            return self._store(p, len(data))

    def _auth(self, p: Packet, data: bytes) -> str | None:
        """Why a packet fails the key check (None: it passes). The MAC binds it to the
        session of the camera's verified descriptor, so one without a descriptor waits for
        none: it is dropped as ``unverifiable``."""
        assert self.key is not None
        if not p.flags & FLAG_SIGNED:
            return "unsigned"
        meta = self.meta_for(p.camera)
        if meta is None:
            return "unverifiable"
        if not self.key.packet_ok(meta.session, signed_part(data, p.camera, p.substream), p.mac):
            return "bad_signature"
        return None

    def _drop(self, reason: str) -> bool:
        self.counters["dropped_packets"] += 1
        self.counters[f"drop_{reason}"] += 1
        return False

    def _store(self, p: Packet, wire: int) -> bool:
        now = self.clock()
        last = self._last.get(p.camera)
        frames = self._pending.setdefault(p.camera, {})
        # a frame still pending below ``last`` (a later frame was evicted for memory) is not late
        if last is not None and p.frame_index <= last and p.frame_index not in frames:
            if last - p.frame_index <= self.reorder_window:
                return self._drop("late")
            # far behind what we delivered: the edge restarted its numbering
            self.counters["frames_dropped"] += len(frames)  # the old stream's unfinished frames
            self._reset(p.camera)
            self.counters["stream_restarts"] += 1
            frames = self._pending.setdefault(p.camera, {})
        f = frames.get(p.frame_index)
        if f is None:
            f = frames[p.frame_index] = _Frame(p.capture_us, now, now)
        elif f.capture_us != p.capture_us:
            return self._drop("inconsistent")
        key = p.substream
        sub = f.subs.get(key)
        if sub is None:
            sub = f.subs[key] = _Substream(p.fragment_count)
        added = sub.add(p)
        if added is None:
            return self._drop("inconsistent")
        if not added:
            self.counters["duplicates"] += 1
            return False
        f.last_seen = now
        f.flags |= p.flags
        f.stored += len(p.payload) + FRAGMENT_COST
        f.wire += wire
        self._stored += len(p.payload) + FRAGMENT_COST
        self.counters["bytes"] += wire
        self.counters[f"bytes_{p.kind.name.lower()}"] += wire
        self._enforce_bounds(p.camera)
        return True

    def _enforce_bounds(self, camera: str) -> None:
        frames = self._pending[camera]
        while len(frames) > self.max_frames:
            self._evict(camera, min(frames))
        while self._stored > self.max_bytes:
            cam, idx = min(((c, i) for c, fs in self._pending.items() for i in fs),
                           key=lambda ci: self._pending[ci[0]][ci[1]].first_seen)
            self._evict(cam, idx)

    def _evict(self, camera: str, index: int) -> None:
        f = self._pending[camera].pop(index)
        self._stored -= f.stored
        self.counters["frames_evicted"] += 1
        self._last[camera] = max(index, self._last.get(camera, index))

    def _reset(self, camera: str) -> None:
        for f in self._pending.pop(camera, {}).values():
            self._stored -= f.stored
        self._last.pop(camera, None)

    def reset_camera(self, camera: str) -> None:
        """Forget a camera's state (its stream restarted with a new session, or it went idle
        and was evicted)."""
        with self._lock:
            self._reset(camera)

    @property
    def cameras(self) -> int:
        """Cameras with state here (pending frames or a delivery position)."""
        with self._lock:
            return len(self._pending.keys() | self._last.keys())

    # -- output -------------------------------------------------------------------------------

    def _complete(self, camera: str, f: _Frame) -> bool:
        side = f.payload("side")
        meta = self.meta_for(camera)
        if side is None or meta is None:
            return False
        try:
            sent, rest_sent = peek_manifest(side, meta.tasks)
        except PacketError:
            return False
        wanted = sent if self.tasks is None else sent & self.tasks
        if any(f.payload(f"task/{t}") is None for t in wanted):
            return False
        return not (rest_sent and self.rest and f.payload("rest") is None)

    def _assemble(self, camera: str, index: int, f: _Frame, complete: bool) -> AssembledFrame:
        tasks = {k[5:]: v.join() for k, v in f.subs.items() if k.startswith("task/") and v.done}
        return AssembledFrame(camera, index, f.capture_us, f.payload("side"), tasks,
                              f.payload("rest"), complete, f.wire, f.last_seen, f.flags)

    def pop_ready(self, flush: bool = False) -> list[AssembledFrame]:
        """Frames ready for decoding, in frame order per camera. ``flush`` treats every pending
        frame as timed out (end of a stream or recording)."""
        out: list[AssembledFrame] = []
        with self._lock:
            now = self.clock()
            for camera, frames in self._pending.items():
                for index in sorted(frames):
                    f = frames[index]
                    complete = self._complete(camera, f)
                    expired = flush or now - f.first_seen > self.timeout_s
                    if not complete and not expired:
                        break
                    del frames[index]
                    self._stored -= f.stored
                    self._last[camera] = max(index, self._last.get(camera, index))
                    usable = complete or (f.payload("side") is not None
                                          and self.meta_for(camera) is not None)
                    if usable:
                        self.counters["frames_complete" if complete else "frames_partial"] += 1
                        out.append(self._assemble(camera, index, f, complete))
                    else:
                        self.counters["frames_dropped"] += 1
        return out

    @property
    def pending_frames(self) -> int:
        with self._lock:
            return sum(len(fs) for fs in self._pending.values())

    @property
    def stored_bytes(self) -> int:
        return self._stored
