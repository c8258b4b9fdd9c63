"""The intra latent coder: the one place that quantises a frame's latents and entropy-codes them
into the learned codec's ``side``, region and ``rest`` payloads, and decodes them back.

Every frame of every stream uses this format; temporal prediction (``temporal.py``) is a layer
over it that may replace a region's or the rest's intra body by a predicted one and may reuse
an earlier frame's z. With ``codec.temporal.enabled: false`` every frame is intra, and its bytes
are those of an intra frame of a temporal stream at the same frame number (tested)::

    side   [h u16][w u16][rate u8][z mode u8][seq u32]   z mode 0: [rANS of z]
                                                        z mode 1: [z seq u32] (temporal layer)
    region [mode u8][body]     mode 0 (intra): rANS of the box's y cells, round((y - mu) / step)
    rest   [mode u8][body]     mode 0 (intra): rANS of the y cells outside every box
           (modes 1 and 2, residual and skip, belong to the temporal layer)

Each payload is sealed (``entropy.seal``): format version, CRC over a tag and the body; a region's
and the rest's tag binds them to this frame's side and their boxes. ``seq`` numbers the frames of
one stream, so a predicted frame can tell whether the decoder holds the frame it refers to.

:meth:`IntraCoder.encode` and :meth:`IntraCoder.decode` mirror each other: what ``encode``
returns (side, regions, rest) is what ``decode`` takes, and both return a :class:`LatentFrame`.
A :class:`Layer` passed to them supplies what is not intra.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from discover.sdk.codecs.learned.entropy import (
    HYPER_STRIDE,
    LATENT_STRIDE,
    LatentBox,
    LatentCoder,
    MissingReference,
    PayloadError,
    outside_mask,
    rans_decode,
    rans_encode,
    region_tag,
    rest_tag,
    seal,
    side_digest,
    unseal,
)

INTRA = 0  #: mode byte of an intra region or rest payload
Z_NEW, Z_REUSE = 0, 1  #: side: z sent, or the z of frame ``z seq`` reused (temporal layer)
SYMBOL_LIMIT = 2**15  #: intra and residual symbols are clipped to +-this
_HEAD = struct.Struct(">HHBBI")  # z grid h, w; rate point; z mode; seq
_Z_SEQ = struct.Struct(">I")

#: a set of latent cells: a box, or a boolean mask of the grid (the rest)
Cells = LatentBox | np.ndarray
#: a payload body and the exact latent it decodes to, with its mode
Coded = tuple[bytes, np.ndarray, int]


@dataclass(frozen=True)
class Side:
    """A frame's side: its header and what it gives every payload of the frame (the CDF index
    and mean of every y cell, the step) plus the digest the payload tags bind to."""

    payload: bytes
    rate: int
    seq: int
    z_seq: int  # frame whose z applies (== seq when this side carries z)
    z_sym: np.ndarray  # int32 N x h' x w'
    idx: np.ndarray  # int32 M x h x w
    mu: np.ndarray  # float64 M x h x w
    step: float

    @property
    def z_new(self) -> bool:
        return self.z_seq == self.seq

    @property
    def digest(self) -> bytes:
        return side_digest(self.payload)

    def region_tag(self, box: LatentBox) -> bytes:
        return region_tag(self.digest, box)

    def rest_tag(self, grid: tuple[int, int], boxes: Sequence[LatentBox]) -> bytes:
        return rest_tag(self.digest, grid, boxes)


@dataclass
class LatentFrame:
    """One frame's latents as the encoder coded them or as the decoder got them.

    ``y_hat`` is the exact decoded latent (float64 M x h x w; the decoder's is zero where
    nothing arrived, see ``received``); ``regions`` / ``rest`` are the payloads (encoder);
    ``modes`` the mode of every region that was coded or decoded, ``rest_mode`` and
    ``rest_mask`` those of the rest; ``errors`` the payloads that did not decode (key, or ``"rest"``) and why."""

    side: Side
    y_hat: np.ndarray
    received: np.ndarray
    region_latents: dict[Any, np.ndarray] = field(default_factory=dict)
    modes: dict[Any, int] = field(default_factory=dict)
    regions: dict[Any, bytes] = field(default_factory=dict)
    rest: bytes | None = None
    rest_mode: int | None = None
    rest_mask: np.ndarray | None = None  # the rest's cells (bool h x w), when coded / decoded
    errors: dict[Any, str] = field(default_factory=dict)
    needs_refresh: bool = False
    intra: bool = True  # every payload intra (set by the layer that chose)


class Layer(Protocol):
    """What a layer over the intra coder supplies (``temporal.TemporalCoder``). ``intra`` is
    the intra choice (computed on demand); a layer returns it or something cheaper."""

    def reused_z(self, z_seq: int, grid: tuple[int, int]) -> np.ndarray:
        """The z of frame ``z_seq`` (decoder); :class:`MissingReference` if not held."""
        ...

    def encode_region(self, key: Any, box: LatentBox, y: np.ndarray, side: Side,
                      intra: Callable[[], Coded]) -> Coded: ...

    def encode_rest(self, mask: np.ndarray, y: np.ndarray, side: Side,
                    intra: Callable[[], Coded]) -> Coded: ...

    def decode_region(self, key: Any, box: LatentBox, mode: int, body: bytes,
                      side: Side) -> np.ndarray: ...

    def decode_rest(self, mask: np.ndarray, mode: int, body: bytes, side: Side) -> np.ndarray: ...


def select(cells: Cells) -> tuple[Any, ...]:
    """Index of ``cells`` into an M x h x w array."""
    if isinstance(cells, np.ndarray):
        return (slice(None), cells)
    lx0, ly0, lx1, ly1 = cells
    return (slice(None), slice(ly0, ly1), slice(lx0, lx1))


class IntraCoder:
    """Codes one frame's y and z into sealed payloads and back (module docstring). Stateless:
    whatever depends on earlier frames comes from a :class:`Layer`."""

    def __init__(self, coder: LatentCoder) -> None:
        self.coder = coder

    # -- side -------------------------------------------------------------------------------

    def encode_side(self, z_sym: np.ndarray, rate: int, seq: int,
                    z_seq: int | None = None) -> Side:
        """The side of frame ``seq``: z sent, or (``z_seq`` given) the z of frame ``z_seq``."""
        if not 0 <= rate < self.coder.rate_points:
            raise ValueError(f"rate point {rate} out of range 0..{self.coder.rate_points - 1}")
        n, h, w = z_sym.shape
        mode = Z_NEW if z_seq is None else Z_REUSE
        body = _HEAD.pack(h, w, rate, mode, seq)
        if z_seq is None:
            body += rans_encode(z_sym, self._z_indexes(n, (h, w)), self.coder.tables.z_cdf)
        else:
            body += _Z_SEQ.pack(z_seq)
        return self._side(seal(body, b"side"), rate, seq, seq if z_seq is None else z_seq, z_sym)

    def decode_side(self, payload: bytes, zgrid: tuple[int, int],
                    layer: Layer | None = None) -> Side:
        """The side of a frame whose z grid is ``zgrid``; :class:`PayloadError` if it is bad
        (or reuses a z and no ``layer`` holds it)."""
        body = unseal(payload, b"side")
        if len(body) < _HEAD.size:
            raise PayloadError("truncated side")
        h, w, rate, mode, seq = _HEAD.unpack_from(body)
        if (h, w) != tuple(zgrid):
            raise PayloadError("hyper-latent size does not match the frame size")
        if rate >= self.coder.rate_points:
            raise PayloadError(f"rate point {rate} not in this checkpoint")
        rest = body[_HEAD.size:]
        if mode == Z_NEW:
            n = self.coder.tables.z_cdf.length.shape[0]
            z_sym = rans_decode(rest, self._z_indexes(n, zgrid), self.coder.tables.z_cdf)
            return self._side(payload, rate, seq, seq, z_sym)
        if mode != Z_REUSE or len(rest) != _Z_SEQ.size:
            raise PayloadError(f"bad z mode {mode}")
        if layer is None:
            raise PayloadError("side reuses an earlier z, but temporal prediction is off")
        (z_seq,) = _Z_SEQ.unpack(rest)
        return self._side(payload, rate, seq, z_seq, layer.reused_z(z_seq, zgrid))

    def _side(self, payload: bytes, rate: int, seq: int, z_seq: int, z_sym: np.ndarray) -> Side:
        idx, mu = self.coder.parameters(z_sym, rate)
        return Side(payload, rate, seq, z_seq, z_sym, idx, mu, self.coder.step(rate))

    @staticmethod
    def _z_indexes(n: int, grid: tuple[int, int]) -> np.ndarray:
        return np.broadcast_to(np.arange(n, dtype=np.int32)[:, None, None], (n, *grid))

    # -- cells ------------------------------------------------------------------------------

    def quantise(self, y: np.ndarray, side: Side) -> np.ndarray:
        """Intra symbols of every y cell: ``round((y - mu) / step)``, clipped (int32)."""
        q = np.rint((y - side.mu) / side.step).clip(-SYMBOL_LIMIT, SYMBOL_LIMIT)
        return q.astype(np.int32)

    def intra_latent(self, y: np.ndarray, z_sym: np.ndarray,
                     rate: int) -> tuple[np.ndarray, np.ndarray]:
        """The latent an intra frame of ``y`` decodes to, and every cell's CDF index, without
        making payloads (what the residual model is fitted on, ``training.py``)."""
        side = self._side(b"", rate, 0, 0, z_sym)
        return self.quantise(y, side) * side.step + side.mu, side.idx

    def cells(self, sym: np.ndarray, idx: np.ndarray) -> bytes:
        """rANS of y symbols, each with the CDF its index names (any shape, C order)."""
        return rans_encode(sym, idx, self.coder.tables.y_cdf)

    def uncells(self, body: bytes, idx: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`cells`; ``idx`` fixes the count and shape."""
        return rans_decode(body, idx, self.coder.tables.y_cdf)

    def decode_payload(self, payload: bytes, side: Side, cells: Cells, tag: bytes,
                       predicted: Callable[[int, bytes], np.ndarray] | None = None
                       ) -> tuple[np.ndarray, int]:
        """Latent and mode of one region or rest payload: unsealed, intra decoded here, any
        other mode handed to ``predicted``; :class:`PayloadError` if it does not decode."""
        body = unseal(payload, tag)
        if not body:
            raise PayloadError("empty payload")
        sel = select(cells)
        if body[0] == INTRA:
            return self.uncells(body[1:], side.idx[sel]) * side.step + side.mu[sel], INTRA
        if predicted is None:
            raise PayloadError(f"mode {body[0]} needs temporal prediction, which is off")
        return predicted(body[0], body), body[0]

    # -- frames -----------------------------------------------------------------------------

    def encode(self, y: np.ndarray, z_sym: np.ndarray, boxes: Mapping[Any, LatentBox],
               send_rest: bool, rate: int, seq: int, *, z_seq: int | None = None,
               layer: Layer | None = None) -> LatentFrame:
        """Code one frame: ``y`` float64 (M x h x w), ``z_sym`` (N x h' x w'), one region per
        box (payloads keyed like ``boxes``), the rest if asked. Without ``layer`` every payload
        is intra."""
        side = self.encode_side(z_sym, rate, seq, z_seq)
        q = self.quantise(y, side)
        y_hat = q * side.step + side.mu
        f = LatentFrame(side, y_hat, np.ones(y.shape[1:], bool))
        for key, box in boxes.items():
            sel = select(box)

            def intra(sel: tuple[Any, ...] = sel) -> Coded:
                # from q, not y_hat: an earlier overlapping region may have written there
                return (bytes([INTRA]) + self.cells(q[sel], side.idx[sel]),
                        q[sel] * side.step + side.mu[sel], INTRA)

            body, lat, f.modes[key] = (layer.encode_region(key, box, y[sel], side, intra)
                                       if layer else intra())
            y_hat[sel], f.region_latents[key] = lat, lat
            f.regions[key] = seal(body, side.region_tag(box))
        if send_rest:
            grid = (y.shape[1], y.shape[2])
            mask = outside_mask(list(boxes.values()), grid)

            def rest() -> Coded:
                return (bytes([INTRA]) + self.cells(q[:, mask], side.idx[:, mask]),
                        y_hat[:, mask], INTRA)

            body, lat, f.rest_mode = layer.encode_rest(mask, y[:, mask], side, rest) \
                if layer else rest()
            y_hat[:, mask], f.rest_mask = lat, mask
            f.rest = seal(body, side.rest_tag(grid, list(boxes.values())))
        return f

    def decode(self, side: bytes, regions: Mapping[Any, tuple[LatentBox, bytes]],
               rest: bytes | None, grid: tuple[int, int], table_boxes: Sequence[LatentBox],
               layer: Layer | None = None) -> LatentFrame:
        """Decode what arrived of one frame (the inverse of :meth:`encode`). ``regions`` maps
        a key to (latent box, payload); ``table_boxes`` are all boxes of the frame (they define
        the rest). Raises :class:`PayloadError` if the side is bad; a bad region or rest goes
        to ``errors`` and is skipped (``needs_refresh`` if it lacked a reference)."""
        ratio = HYPER_STRIDE // LATENT_STRIDE
        s = self.decode_side(side, (grid[0] // ratio, grid[1] // ratio), layer)
        f = LatentFrame(s, np.zeros(s.mu.shape, np.float64), np.zeros(grid, bool))
        if rest:
            mask = outside_mask(table_boxes, grid)
            pred = (lambda m, b: layer.decode_rest(mask, m, b, s)) if layer else None
            self._decode_into(f, "rest", mask, rest, s.rest_tag(grid, table_boxes), pred)
        for key, (box, payload) in regions.items():
            pred = (lambda m, b, k=key, bx=box: layer.decode_region(k, bx, m, b, s)) \
                if layer else None
            self._decode_into(f, key, box, payload, s.region_tag(box), pred)
        return f

    def _decode_into(self, f: LatentFrame, key: Any, cells: Cells, payload: bytes, tag: bytes,
                     predicted: Callable[[int, bytes], np.ndarray] | None) -> None:
        try:
            lat, mode = self.decode_payload(payload, f.side, cells, tag, predicted)
        except PayloadError as e:
            f.errors[key] = str(e)
            f.needs_refresh = f.needs_refresh or isinstance(e, MissingReference)
            return
        sel = select(cells)
        f.y_hat[sel] = lat
        f.received[sel[1:]] = True
        if isinstance(cells, np.ndarray):  # the rest
            f.rest_mode, f.rest_mask = mode, cells
        else:
            f.region_latents[key], f.modes[key] = lat, mode
