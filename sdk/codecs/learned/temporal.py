"""Temporal coding of the region latents (issue 3, "video needs temporal prediction"): a layer
over the intra coder (``intra.py``) that owns what is temporal, the references, the predicted
payload modes and the refresh.

Per-frame intra coding pays for every object again on every frame; on a static camera most
of a region's latent is what the sink already has. So, per camera stream:

* a region that continues one of the previous frame's regions (best box IoU, and that region
  reaches every sink this one reaches: its tasks include this one's) is coded as the residual
  between its latent and that region's *decoded* latent, shifted by the box's move on the
  latent grid or not shifted (a detector's box jitters over a static scene), or intra: the
  encoder keeps whichever payload is shortest; cells the shifted reference does not cover are
  coded intra;
* a region whose residual symbols average under ``skip_threshold`` in magnitude is not
  re-coded: its payload is a "same as before" marker of about 9 bytes (so a sink can tell a
  skipped region from a lost one) and the sink reuses what it has;
* z is re-sent only when more than ``z_reuse_share`` of its symbols changed; otherwise the side
  names the frame whose z to reuse (a few bytes instead of the hyperprior);
* ``rest`` is coded as the residual against the background every earlier ``rest`` since the
  last intra frame left (cells none of them covered are coded intra), or intra if shorter: a
  static background re-sent costs a fraction of a new one, so a viewer's full view stays cheap;
* every ``intra_period`` frames, and when a sink asks over ``<prefix>/<camera>/control``
  (late join, a lost packet), the whole frame is intra, so any sink can start decoding there.
  An intra frame is exactly what :meth:`IntraCoder.encode` makes (the layer is not asked);
  with ``enabled: false`` every frame is one, and the decoder refuses predicted payloads.

Encoder and decoder both keep the exact decoded latents of the last frame (float64, exact: the
residual symbols times a dyadic step plus a dyadic reference), so there is no drift. Residual
symbols use the scale index the hyperprior gives minus a per-channel offset fitted on
consecutive training frames (``fit_residual_offsets``); their mean is the reference.

::

    side   the intra coder's; z mode 1 names the frame whose z applies ([z seq u32])
    region [0 u8][rANS cells]                           intra (intra.py)
           [1 u8][ref rid varint][dx i8][dy i8][cells]  residual against region ``ref rid``
           [2 u8][ref rid varint][dx i8][dy i8]         skip     of frame ``seq - 1``
    rest   [0 u8][rANS cells]                           intra (intra.py)
           [1 u8][ref seq u32][cells]                   residual against the rest kept at
                                                        frame ``ref seq``

    residual cells (shifted reference covers them): round((y - ref) / step), index - offset
    other cells:                                    round((y - mu) / step),  index
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from discover.sdk import varint
from discover.sdk.boxes import pair_iou
from discover.sdk.codecs.learned.entropy import (
    LatentBox,
    LatentCoder,
    MissingReference,
    PayloadError,
    rans_decode,
    rans_encode,
)
from discover.sdk.codecs.learned.intra import (
    INTRA,
    SYMBOL_LIMIT,
    Coded,
    IntraCoder,
    LatentFrame,
    Side,
    select,
)
from pydantic import BaseModel, ConfigDict, Field

RESIDUAL, SKIP = 1, 2  # region / rest modes beside intra.INTRA
_SHIFT = struct.Struct(">bb")
NO_MASK = 255  # residual cells sent without a changed-cell mask
_REST_REF = struct.Struct(">BI")  # residual mode, frame of the reference rest


class TemporalConfig(BaseModel):
    """``codec.temporal``: prediction between frames of one camera."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="code regions as residuals against the previous "
                                            "frame and skip unchanged ones (off: every frame intra)")
    intra_period: int = Field(50, ge=0, description="whole-frame intra refresh every N frames "
                                                   "(0: only at start and when a sink asks)")
    skip_threshold: float = Field(0.05, ge=0.0, description="a region whose residual symbols "
                                  "(round((y - reference) / step)) average below this in "
                                  "magnitude is not re-coded")
    z_reuse_share: float = Field(0.02, ge=0.0, le=1.0, description="reuse the last sent z when "
                                 "at most this share of its symbols changed")
    match_iou: float = Field(0.3, gt=0.0, le=1.0, description="least latent-box IoU for a "
                             "region to continue one of the previous frame")


@dataclass
class _Kept:
    """A region's exact decoded latent, as both ends keep it for the next frame."""

    box: LatentBox
    tasks: frozenset[str]
    latent: np.ndarray  # float64 M x bh x bw


@dataclass
class _State:
    seq: int = -1  # sequence number of the last frame coded / decoded
    z_seq: int = -1  # frame whose z is current
    z_sym: np.ndarray | None = None
    regions: dict[int, _Kept] = field(default_factory=dict)
    rest: _Rest | None = None  # the background as the rest substream last left it


@dataclass
class _Rest:
    """The decoded background of every ``rest`` since the last intra one (both ends keep it):
    the reference of the next ``rest``, so a static background costs little to re-send."""

    seq: int  # frame of the last rest
    latent: np.ndarray  # float64 M x h x w, valid where ``have``
    have: np.ndarray  # bool h x w


def predict(ref: _Kept, box: LatentBox, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference latent moved by (dx, dy) cells onto ``box``: values (zero where not
    covered) and the covered mask (bh x bw)."""
    lx0, ly0, lx1, ly1 = box
    rx0, ry0, rx1, ry1 = ref.box
    pred = np.zeros((ref.latent.shape[0], ly1 - ly0, lx1 - lx0))
    cover = np.zeros((ly1 - ly0, lx1 - lx0), bool)
    # absolute cells Y in box whose source Y - dy lies in the reference box
    y0, y1 = max(ly0, ry0 + dy), min(ly1, ry1 + dy)
    x0, x1 = max(lx0, rx0 + dx), min(lx1, rx1 + dx)
    if y0 < y1 and x0 < x1:
        pred[:, y0 - ly0:y1 - ly0, x0 - lx0:x1 - lx0] = \
            ref.latent[:, y0 - dy - ry0:y1 - dy - ry0, x0 - dx - rx0:x1 - dx - rx0]
        cover[y0 - ly0:y1 - ly0, x0 - lx0:x1 - lx0] = True
    return pred, cover


def _shift(a: LatentBox, b: LatentBox) -> tuple[int, int]:
    """Cells box ``a`` moved from ``b`` (centre to centre, rounded), within an int8."""
    dx = int(np.floor((a[0] + a[2] - b[0] - b[2]) / 2 + 0.5))
    dy = int(np.floor((a[1] + a[3] - b[1] - b[3]) / 2 + 0.5))
    return max(-127, min(127, dx)), max(-127, min(127, dy))


class TemporalCoder:
    """One camera stream's frame coder; the same class encodes (edge) and decodes (sink).
    Every frame goes through :class:`IntraCoder`; this class is the :class:`intra.Layer` that
    supplies its predicted payloads and reused z, and keeps the references.

    ``offsets`` (rates x M, int) lower the scale index of residual cells."""

    def __init__(self, coder: LatentCoder, offsets: np.ndarray, config: TemporalConfig) -> None:
        self.intra = IntraCoder(coder)
        self.offsets, self.config = offsets, config
        self.state = _State()
        self._tasks: Mapping[Any, frozenset[str]] = {}  # the frame being encoded: per region
        self._mask_bits: np.ndarray | None = None
        self._refresh = threading.Event()
        self._refresh.set()  # the first frame is intra

    def request_refresh(self) -> None:
        """Make the next encoded frame intra (thread-safe: called from the MQTT thread)."""
        self._refresh.set()

    # -- frames -----------------------------------------------------------------------------

    def encode(self, y: np.ndarray, z_sym: np.ndarray, boxes: Mapping[int, LatentBox],
               tasks: Mapping[int, frozenset[str]], send_rest: bool, rate: int) -> LatentFrame:
        """Code one frame: ``y`` float64 (M x h x w), ``z_sym`` int (N x h' x w'), the boxes and
        tasks of its regions by region id. Intra (refresh, period, temporal off) or predicted."""
        st, cfg = self.state, self.config
        seq = st.seq + 1
        intra = (self._refresh.is_set() or not cfg.enabled or st.z_sym is None
                 or (cfg.intra_period > 0 and seq % cfg.intra_period == 0))
        self._refresh.clear()
        z_seq = None
        if not intra and st.z_sym is not None and st.z_sym.shape == z_sym.shape \
                and float(np.mean(st.z_sym != z_sym)) <= cfg.z_reuse_share:
            z_seq, z_sym = st.z_seq, st.z_sym
        if intra:
            st.rest = None
        self._tasks = tasks
        f = self.intra.encode(y, z_sym, boxes, send_rest, rate, seq, z_seq=z_seq,
                              layer=None if intra else self)
        f.intra = intra
        self._keep(f, boxes, tasks)
        return f

    def decode(self, side: bytes, regions: Mapping[Any, tuple[LatentBox, bytes]],
               rest: bytes | None, grid: tuple[int, int], table_boxes: list[LatentBox],
               tasks: Mapping[Any, frozenset[str]]) -> LatentFrame:
        """Decode what arrived of one frame (``IntraCoder.decode`` with this layer when
        temporal prediction is on). Raises :class:`PayloadError` if the side is bad or names a
        z this decoder does not have."""
        f = self.intra.decode(side, regions, rest, grid, table_boxes,
                              self if self.config.enabled else None)
        self._keep(f, {k: box for k, (box, _) in regions.items()}, tasks)
        return f

    def _keep(self, f: LatentFrame, boxes: Mapping[Any, LatentBox],
              tasks: Mapping[Any, frozenset[str]]) -> None:
        """What both ends keep of a frame for the next: its region latents, z, the rest."""
        st, s = self.state, f.side
        if f.rest_mask is not None and f.rest_mode is not None:
            self._keep_rest(s.seq, f.rest_mask, f.y_hat[:, f.rest_mask], f.rest_mode == INTRA)
        st.seq, st.z_seq, st.z_sym = s.seq, s.z_seq, s.z_sym
        st.regions = {k: _Kept(boxes[k], tasks.get(k, frozenset()), lat)
                      for k, lat in f.region_latents.items()}

    def _keep_rest(self, seq: int, mask: np.ndarray, lat: np.ndarray, intra: bool) -> None:
        st = self.state
        if intra or st.rest is None:
            m = lat.shape[0]
            st.rest = _Rest(seq, np.zeros((m, *mask.shape)), np.zeros(mask.shape, bool))
        st.rest.seq = seq
        st.rest.latent[:, mask] = lat
        st.rest.have |= mask

    # -- the layer: encoding ----------------------------------------------------------------

    def encode_region(self, key: int, box: LatentBox, y: np.ndarray, side: Side,
                      intra: Callable[[], Coded]) -> Coded:
        """A region against its reference in the previous frame: skip if its residual is all
        but zero, else the box's move, no move (a static background inside a moving box) or
        intra, whichever is fewest bytes (the decoder follows the header)."""
        cfg, prev, tk = self.config, self.state.regions, self._tasks[key]
        ref_rid, best = None, cfg.match_iou
        for prid, p in prev.items():
            iou = pair_iou(box, p.box)
            if iou >= best and tk <= p.tasks:
                ref_rid, best = prid, iou
        if ref_rid is None:
            return intra()
        ref, sel = prev[ref_rid], select(box)
        idx, step = side.idx[sel], side.step
        res_idx = self._res_index(idx, side.rate)
        moves = [_shift(box, ref.box)]
        if moves[0] != (0, 0):
            moves.append((0, 0))
        found: Coded | None = None
        for dx, dy in moves:
            pred, cover = predict(ref, box, dx, dy)
            target = np.where(cover, pred, side.mu[sel])
            sym = np.rint((y - target) / step).clip(-SYMBOL_LIMIT, SYMBOL_LIMIT)
            if cover.all() and float(np.abs(sym).mean()) < cfg.skip_threshold:
                return ref_header(SKIP, ref_rid, dx, dy), pred, SKIP
            body = ref_header(RESIDUAL, ref_rid, dx, dy) + self._masked_cells(
                sym.astype(np.int32), idx, res_idx, cover)
            if found is None or len(body) < len(found[0]):
                found = body, sym * step + target, RESIDUAL
        alt = intra()
        return alt if found is None or len(alt[0]) <= len(found[0]) else found

    def encode_rest(self, mask: np.ndarray, y: np.ndarray, side: Side,
                    intra: Callable[[], Coded]) -> Coded:
        """The rest intra, or the residual against the kept background where it covers these
        cells (cells it does not cover coded intra), whichever is shorter."""
        alt, kept = intra(), self.state.rest
        if kept is None:
            return alt
        idx = side.idx[:, mask]
        cover = kept.have[mask]
        target = np.where(cover, kept.latent[:, mask], side.mu[:, mask])
        res = np.rint((y - target) / side.step).clip(-SYMBOL_LIMIT, SYMBOL_LIMIT)
        body = _REST_REF.pack(RESIDUAL, kept.seq) + self._masked_cells(
            res.astype(np.int32), idx, self._res_index(idx, side.rate), cover)
        return (body, res * side.step + target, RESIDUAL) if len(body) < len(alt[0]) else alt

    # -- the layer: decoding ----------------------------------------------------------------

    def reused_z(self, z_seq: int, grid: tuple[int, int]) -> np.ndarray:
        st = self.state
        if st.z_sym is not None and st.z_seq == z_seq and st.z_sym.shape[1:] == tuple(grid):
            return st.z_sym
        st.regions = {}
        raise MissingReference("reference z missing (joined late or lost a frame): "
                               "waiting for an intra refresh")

    def decode_region(self, key: Any, box: LatentBox, mode: int, body: bytes,
                      side: Side) -> np.ndarray:
        """A residual or skipped region against region ``ref rid`` of the previous frame, as
        this decoder has it."""
        if mode not in (RESIDUAL, SKIP):
            raise PayloadError(f"unknown region mode {mode}")
        ref_rid, dx, dy, start = parse_ref_header(body)
        st = self.state
        ref = st.regions.get(ref_rid) if st.seq == side.seq - 1 else None
        if ref is None:
            raise MissingReference("reference region missing (joined late or lost a frame): "
                                   "waiting for an intra refresh")
        pred, cover = predict(ref, box, dx, dy)
        if mode == SKIP:
            if not cover.all():
                raise PayloadError("skipped region not covered by its reference")
            return pred
        sel = select(box)
        idx = side.idx[sel]
        sym = self._unmasked_cells(body[start:], idx, self._res_index(idx, side.rate), cover)
        return sym * side.step + np.where(cover, pred, side.mu[sel])

    def decode_rest(self, mask: np.ndarray, mode: int, body: bytes, side: Side) -> np.ndarray:
        """A residual rest (M x n) against the kept background it names."""
        if mode != RESIDUAL:
            raise PayloadError(f"unknown rest mode {mode}")
        if len(body) < _REST_REF.size:
            raise PayloadError("truncated rest reference")
        _, ref_seq = _REST_REF.unpack_from(body)
        kept = self.state.rest
        if kept is None or kept.seq != ref_seq:
            raise MissingReference("reference rest missing (joined late or lost a frame): "
                                   "waiting for an intra refresh")
        idx = side.idx[:, mask]
        cover = kept.have[mask]
        target = np.where(cover, kept.latent[:, mask], side.mu[:, mask])
        sym = self._unmasked_cells(body[_REST_REF.size:], idx, self._res_index(idx, side.rate),
                                   cover)
        return sym * side.step + target

    # -- residual cells ---------------------------------------------------------------------

    def _res_index(self, idx: np.ndarray, rate: int) -> np.ndarray:
        off = self.offsets[rate].reshape(-1, *([1] * (idx.ndim - 1)))
        return np.maximum(idx - off, 0).astype(np.int32)

    def _cells(self, sym: np.ndarray, idx: np.ndarray, res_idx: np.ndarray,
               cover: np.ndarray) -> bytes:
        """One rANS stream: the uncovered (intra) cells, then the covered (residual) cells."""
        s = np.concatenate([sym[:, ~cover].ravel(), sym[:, cover].ravel()])
        i = np.concatenate([idx[:, ~cover].ravel(), res_idx[:, cover].ravel()])
        return self.intra.cells(s, i)

    def _uncells(self, body: bytes, idx: np.ndarray, res_idx: np.ndarray,
                 cover: np.ndarray) -> np.ndarray:
        i = np.concatenate([idx[:, ~cover].ravel(), res_idx[:, cover].ravel()])
        flat = self.intra.uncells(body, i)
        sym = np.zeros(idx.shape, np.int32)
        n = int((~cover).sum()) * idx.shape[0]
        sym[:, ~cover] = flat[:n].reshape(idx.shape[0], -1)
        sym[:, cover] = flat[n:].reshape(idx.shape[0], -1)
        return sym

    def _mask_rows(self) -> np.ndarray:
        """Per CDF row, the bits a 0 and a 1 cost (2 x rows): the changed-cell mask borrows
        the rows of the y table whose zero probability fits its density best."""
        if self._mask_bits is None:
            t = self.intra.coder.tables.y_cdf
            bits = np.full((2, len(t.length)), 64.0)
            for r, (row, n, off) in enumerate(zip(t.cdf, t.length, t.offset, strict=True)):
                for s in (0, 1):
                    pos = s - int(off)
                    if 0 <= pos < int(n) - 1:
                        p = (int(row[pos + 1]) - int(row[pos])) / 2**16
                        bits[s, r] = -np.log2(p) if p > 0 else 64.0
            self._mask_bits = bits
        return self._mask_bits

    def _masked_cells(self, sym: np.ndarray, idx: np.ndarray, res_idx: np.ndarray,
                      cover: np.ndarray) -> bytes:
        """Residual cells with a changed-cell mask: ``[row u8][varint n][rANS mask, n bytes]``
        then :meth:`_cells` of the uncovered cells and of the covered cells whose residual is
        not all zero. On a static background most covered cells are all zero, and one mask
        bit each costs less than their channels' zero symbols (lossless: same values). Where
        the mask does not pay (a moving object fills the region), ``[255]`` and all cells."""
        changed = (sym != 0).any(axis=0) & cover
        bits = changed[cover].astype(np.int32)
        cost = self._mask_rows()
        ones = int(bits.sum())
        row = int(np.argmin((bits.size - ones) * cost[0] + ones * cost[1]))
        mask = rans_encode(bits, np.full(bits.shape, row, np.int32),
                           self.intra.coder.tables.y_cdf)
        keep = ~cover | changed
        out = bytearray([row])
        varint.put(out, len(mask))
        masked = bytes(out) + mask + self._cells(sym[:, keep], idx[:, keep], res_idx[:, keep],
                                                 cover[keep])
        plain = bytes([NO_MASK]) + self._cells(sym, idx, res_idx, cover)
        return masked if len(masked) < len(plain) else plain

    def _unmasked_cells(self, body: bytes, idx: np.ndarray, res_idx: np.ndarray,
                        cover: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`_masked_cells`: the residual symbols (shape of ``idx``)."""
        if body[:1] == bytes([NO_MASK]):
            return self._uncells(body[1:], idx, res_idx, cover)
        try:
            row = body[0]
            n, pos = varint.get(body, 1)
        except (IndexError, ValueError):
            raise PayloadError("truncated changed-cell mask") from None
        table = self.intra.coder.tables.y_cdf
        if row >= len(table.length) or pos + n > len(body):
            raise PayloadError("bad changed-cell mask")
        bits = rans_decode(body[pos:pos + n], np.full(int(cover.sum()), row, np.int32), table)
        if np.any((bits != 0) & (bits != 1)):
            raise PayloadError("bad changed-cell mask")
        changed = np.zeros(cover.shape, bool)
        changed[cover] = bits == 1
        keep = ~cover | changed
        sym = np.zeros(idx.shape, np.int32)
        sym[:, keep] = self._uncells(body[pos + n:], idx[:, keep], res_idx[:, keep], cover[keep])
        return sym


def ref_header(mode: int, ref_rid: int, dx: int, dy: int) -> bytes:
    """``[mode u8][ref rid varint][dx i8][dy i8]``: a predicted region's reference."""
    out = bytearray([mode])
    varint.put(out, ref_rid)
    return bytes(out) + _SHIFT.pack(dx, dy)


def parse_ref_header(body: bytes) -> tuple[int, int, int, int]:
    """Inverse of :func:`ref_header`: reference rid, dx, dy and where the cells start."""
    try:
        ref_rid, pos = varint.get(body, 1)
        dx, dy = _SHIFT.unpack_from(body, pos)
    except (ValueError, struct.error):
        raise PayloadError("truncated reference header") from None
    return ref_rid, dx, dy, pos + _SHIFT.size


# -- fitting the residual model ---------------------------------------------------------------

def residual_bits(sym: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """-log2 P(sym) under a zero-mean Gaussian of the given scale, discretised to integers
    (as the rANS tables model it, floored at 2**-16 like their 16-bit precision)."""
    import torch

    s = torch.from_numpy(np.abs(sym).astype(np.float64))
    sc = torch.from_numpy(np.asarray(scales, np.float64))
    p = torch.special.ndtr((s + 0.5) / sc) - torch.special.ndtr((s - 0.5) / sc)
    return (-torch.log2(p.clamp_min(2.0**-16))).numpy()


def fit_offsets(pairs: list[tuple[np.ndarray, np.ndarray]], scale_table: np.ndarray,
                max_offset: int = 24) -> tuple[np.ndarray, dict[str, float]]:
    """Per channel, the index offset that codes frame-to-frame latent residuals in the fewest
    bits. ``pairs`` holds (residual symbols M x n, scale indexes M x n) samples of one rate
    point. Returns the offsets (M,) and the bits per residual cell before/after."""
    sym = np.concatenate([p[0] for p in pairs], axis=1)
    idx = np.concatenate([p[1] for p in pairs], axis=1)
    m = sym.shape[0]
    offsets = np.zeros(m, np.int64)
    before = after = 0.0
    for ch in range(m):
        costs = []
        for off in range(max_offset + 1):
            sc = scale_table[np.maximum(idx[ch] - off, 0)]
            costs.append(float(residual_bits(sym[ch], sc).sum()))
        offsets[ch] = int(np.argmin(costs))
        before += costs[0]
        after += costs[offsets[ch]]
    n = sym.size or 1
    return offsets, {"bits_per_cell_before": before / n, "bits_per_cell_after": after / n}
