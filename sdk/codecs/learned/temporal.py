"""Temporal coding of the region latents (issue 3, "video needs temporal prediction").

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

Encoder and decoder both keep the exact decoded latents of the last frame (float64, exact: the
residual symbols times a dyadic step plus a dyadic reference), so there is no drift. Residual
symbols use the scale index the hyperprior gives minus a per-channel offset fitted on
consecutive training frames (``fit_residual_offsets``); their mean is the reference.

::

    side   [h u16][w u16][rate u8][z mode u8][seq u32][z seq u32][rANS z if mode 0]
    region [mode u8]                                    mode 0 intra:    [rANS cells]
           [mode u8][ref rid varint][dx i8][dy i8]     1 residual: [rANS cells]
                                                       2 skip:     (nothing)

    (the reference is region ``ref rid`` of frame ``seq - 1``)

    rest   [0 u8][rANS cells]                          intra
           [1 u8][ref seq u32][rANS cells]             residual against the rest kept at
                                                       frame ``ref seq``

    residual cells (shifted reference covers them): round((y - ref) / step), index - offset
    other cells:                                    round((y - mu) / step),  index
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from discover.sdk import varint
from discover.sdk.boxes import pair_iou
from discover.sdk.codecs.learned.entropy import (
    HYPER_STRIDE,
    LATENT_STRIDE,
    LatentBox,
    LatentCoder,
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
from pydantic import BaseModel, ConfigDict, Field

INTRA, RESIDUAL, SKIP = 0, 1, 2
Z_INTRA, Z_REUSE = 0, 1
_SIDE = struct.Struct(">HHBBII")
_SHIFT = struct.Struct(">bb")
NO_MASK = 255  # residual cells sent without a changed-cell mask
_REST_REF = struct.Struct(">BI")  # residual mode, frame of the reference rest
SYMBOL_LIMIT = 2**15


class MissingReference(PayloadError):
    """A payload predicted from something this decoder does not have; an intra refresh
    (the sink asks for one) makes the stream decodable again."""


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
    """One camera stream's temporal coder; the same class encodes (edge) and decodes (sink).

    ``offsets`` (rates x M, int) lower the scale index of residual cells."""

    def __init__(self, coder: LatentCoder, offsets: np.ndarray, config: TemporalConfig) -> None:
        self.coder, self.offsets, self.config = coder, offsets, config
        self.state = _State()
        self._mask_bits: np.ndarray | None = None
        self._refresh = threading.Event()
        self._refresh.set()  # the first frame is intra

    def request_refresh(self) -> None:
        """Make the next encoded frame intra (thread-safe: called from the MQTT thread)."""
        self._refresh.set()

    # -- helpers ----------------------------------------------------------------------------

    def _res_index(self, idx: np.ndarray, rate: int) -> np.ndarray:
        off = self.offsets[rate][:, None, None]
        return np.maximum(idx - off, 0).astype(np.int32)

    def _cells(self, sym: np.ndarray, idx: np.ndarray, res_idx: np.ndarray,
               cover: np.ndarray) -> bytes:
        """One rANS stream: the uncovered (intra) cells, then the covered (residual) cells."""
        s = np.concatenate([sym[:, ~cover].ravel(), sym[:, cover].ravel()])
        i = np.concatenate([idx[:, ~cover].ravel(), res_idx[:, cover].ravel()])
        return rans_encode(s, i, self.coder.tables.y_cdf)

    def _uncells(self, body: bytes, idx: np.ndarray, res_idx: np.ndarray,
                 cover: np.ndarray) -> np.ndarray:
        i = np.concatenate([idx[:, ~cover].ravel(), res_idx[:, cover].ravel()])
        flat = rans_decode(body, i, self.coder.tables.y_cdf)
        sym = np.zeros(idx.shape, np.int32)
        n = int((~cover).sum()) * idx.shape[0]
        sym[:, ~cover] = flat[:n].reshape(idx.shape[0], -1)
        sym[:, cover] = flat[n:].reshape(idx.shape[0], -1)
        return sym

    def _mask_rows(self) -> np.ndarray:
        """Per CDF row, the bits a 0 and a 1 cost (2 x rows): the changed-cell mask borrows
        the rows of the y table whose zero probability fits its density best."""
        if self._mask_bits is None:
            t = self.coder.tables.y_cdf
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
        mask = rans_encode(bits, np.full(bits.shape, row, np.int32), self.coder.tables.y_cdf)
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
        if row >= len(self.coder.tables.y_cdf.length) or pos + n > len(body):
            raise PayloadError("bad changed-cell mask")
        bits = rans_decode(body[pos:pos + n], np.full(int(cover.sum()), row, np.int32),
                           self.coder.tables.y_cdf)
        if np.any((bits != 0) & (bits != 1)):
            raise PayloadError("bad changed-cell mask")
        changed = np.zeros(cover.shape, bool)
        changed[cover] = bits == 1
        keep = ~cover | changed
        sym = np.zeros(idx.shape, np.int32)
        sym[:, keep] = self._uncells(body[pos + n:], idx[:, keep], res_idx[:, keep], cover[keep])
        return sym

    # -- encode -----------------------------------------------------------------------------

    def encode(self, y: np.ndarray, z_sym: np.ndarray, boxes: list[LatentBox],
               tasks: list[frozenset[str]], rids: list[int], send_rest: bool,
               rate: int) -> dict[str, Any]:
        """Code one frame: ``y`` float64 (M x h x w), ``z_sym`` int (N x h' x w'), the boxes
        with their tasks and region ids. Returns side, regions (in order), rest, modes, y_hat."""
        c, st, cfg = self.coder, self.state, self.config
        seq = st.seq + 1
        intra = (self._refresh.is_set() or not cfg.enabled or st.z_sym is None
                 or (cfg.intra_period > 0 and seq % cfg.intra_period == 0))
        self._refresh.clear()
        z_mode = Z_INTRA
        if not intra and st.z_sym is not None and st.z_sym.shape == z_sym.shape:
            changed = float(np.mean(st.z_sym != z_sym))
            if changed <= cfg.z_reuse_share:
                z_mode, z_sym = Z_REUSE, st.z_sym
        z_seq = seq if z_mode == Z_INTRA else st.z_seq
        head = _SIDE.pack(z_sym.shape[1], z_sym.shape[2], rate, z_mode, seq, z_seq)
        if z_mode == Z_INTRA:
            n = z_sym.shape[0]
            zi = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None, None], z_sym.shape)
            head += rans_encode(z_sym, zi, c.tables.z_cdf)
        side = seal(head, b"side")
        digest = side_digest(side)
        idx, mu = c.parameters(z_sym, rate)
        step = c.step(rate)
        res_idx = self._res_index(idx, rate)
        prev = {} if intra else st.regions
        payloads, modes, kept = [], [], {}
        q = np.rint((y - mu) / step).clip(-SYMBOL_LIMIT, SYMBOL_LIMIT)  # intra symbols
        y_hat = q * step + mu
        for box, tk, rid in zip(boxes, tasks, rids, strict=True):
            lx0, ly0, lx1, ly1 = box
            sl = (slice(None), slice(ly0, ly1), slice(lx0, lx1))
            ref_rid, best = None, cfg.match_iou
            for prid, p in prev.items():
                iou = pair_iou(box, p.box)
                if iou >= best and tk <= p.tasks:
                    ref_rid, best = prid, iou
            # the encoder's choice, the decoder follows the header: a covered region whose
            # residual is all but zero is skipped; else the box's move, no move (a static
            # background inside a moving box) or intra, whichever is fewest bytes
            body, lat, mode = b"", None, INTRA
            if ref_rid is not None:
                ref = prev[ref_rid]
                moves = [_shift(box, ref.box)]
                if moves[0] != (0, 0):
                    moves.append((0, 0))
                for dx, dy in moves:
                    pred, cover = predict(ref, box, dx, dy)
                    target = np.where(cover, pred, mu[sl])
                    sym = np.rint((y[sl] - target) / step).clip(-SYMBOL_LIMIT, SYMBOL_LIMIT)
                    if cover.all() and float(np.abs(sym).mean()) < cfg.skip_threshold:
                        body, lat, mode = ref_header(SKIP, ref_rid, dx, dy), pred, SKIP
                        break
                    cand = ref_header(RESIDUAL, ref_rid, dx, dy) + self._masked_cells(
                        sym.astype(np.int32), idx[sl], res_idx[sl], cover)
                    if not body or len(cand) < len(body):
                        body, lat, mode = cand, sym * step + target, RESIDUAL
            if mode != SKIP:
                intra_body = bytes([INTRA]) + self._cells(
                    q[sl].astype(np.int32), idx[sl], res_idx[sl], np.zeros(box_shape(box), bool))
                if not body or len(intra_body) <= len(body):
                    body, lat, mode = intra_body, y_hat[sl].copy(), INTRA
            modes.append(mode)
            y_hat[sl] = lat
            kept[rid] = _Kept(box, tk, lat)
            payloads.append(seal(body, region_tag(digest, box)))
        rest = None
        if intra:
            st.rest = None
        if send_rest:
            grid = (y.shape[1], y.shape[2])
            mask = outside_mask(boxes, grid)
            body, lat = self._encode_rest(y[:, mask], q[:, mask], mu[:, mask], idx[:, mask],
                                          res_idx[:, mask], step, mask)
            rest = seal(body, rest_tag(digest, grid, boxes))
            y_hat[:, mask] = lat
            self._keep_rest(seq, mask, lat, body[0] == INTRA)
        st.seq, st.z_seq, st.z_sym, st.regions = seq, z_seq, z_sym, kept
        return {"side": side, "regions": payloads, "rest": rest, "modes": modes,
                "y_hat": y_hat, "intra": intra, "z_mode": z_mode, "z_sym": z_sym,
                "indexes": idx}

    def _encode_rest(self, y: np.ndarray, q: np.ndarray, mu: np.ndarray, idx: np.ndarray,
                     res_idx: np.ndarray, step: float,
                     mask: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The rest body of the cells in ``mask`` (arrays M x n; ``q`` their intra symbols) and
        their decoded latent: intra, or the residual against the last rest where it covered
        these cells (cells it did not cover coded intra), whichever is shorter."""
        st = self.state
        body = bytes([INTRA]) + rans_encode(q.astype(np.int32), idx, self.coder.tables.y_cdf)
        lat = q * step + mu
        if st.rest is not None:
            cover = st.rest.have[mask]
            target = np.where(cover, st.rest.latent[:, mask], mu)
            res = np.rint((y - target) / step).clip(-SYMBOL_LIMIT, SYMBOL_LIMIT)
            cand = _REST_REF.pack(RESIDUAL, st.rest.seq) + self._masked_cells(
                res.astype(np.int32), idx, res_idx, cover)
            if len(cand) < len(body):
                body, lat = cand, res * step + target
        return body, lat

    def _keep_rest(self, seq: int, mask: np.ndarray, lat: np.ndarray, intra: bool) -> None:
        st = self.state
        if intra or st.rest is None:
            m = lat.shape[0]
            st.rest = _Rest(seq, np.zeros((m, *mask.shape)), np.zeros(mask.shape, bool))
        st.rest.seq = seq
        st.rest.latent[:, mask] = lat
        st.rest.have |= mask

    def _decode_rest(self, payload: bytes, seq: int, idx: np.ndarray, res_idx: np.ndarray,
                     mu: np.ndarray, step: float, mask: np.ndarray, tag: bytes) -> np.ndarray:
        """Latent (M x n) of the rest cells in ``mask``; :class:`PayloadError` if the payload
        is bad or references a rest this decoder does not have."""
        st = self.state
        b = unseal(payload, tag)
        if not b:
            raise PayloadError("empty rest payload")
        if b[0] == INTRA:
            lat = rans_decode(b[1:], idx[:, mask], self.coder.tables.y_cdf) * step + mu[:, mask]
        elif b[0] == RESIDUAL:
            if len(b) < _REST_REF.size:
                raise PayloadError("truncated rest reference")
            _, ref_seq = _REST_REF.unpack_from(b)
            if st.rest is None or st.rest.seq != ref_seq:
                raise MissingReference("reference rest missing (joined late or lost a frame): "
                                       "waiting for an intra refresh")
            cover = st.rest.have[mask]
            target = np.where(cover, st.rest.latent[:, mask], mu[:, mask])
            sym = self._unmasked_cells(b[_REST_REF.size:], idx[:, mask], res_idx[:, mask],
                                       cover)
            lat = sym * step + target
        else:
            raise PayloadError(f"unknown rest mode {b[0]}")
        self._keep_rest(seq, mask, lat, b[0] == INTRA)
        return lat

    # -- decode -----------------------------------------------------------------------------

    def decode(self, side: bytes, regions: dict[Any, tuple[LatentBox, bytes]],
               rest: bytes | None, grid: tuple[int, int], table_boxes: list[LatentBox],
               tasks: dict[Any, frozenset[str]]) -> dict[str, Any]:
        """Decode what arrived of one frame (same result dict as the model's ``decompress``,
        plus ``needs_refresh`` when a reference was missing). Raises :class:`PayloadError` if
        the side is bad or names a z this decoder does not have."""
        c, st = self.coder, self.state
        ratio = HYPER_STRIDE // LATENT_STRIDE
        hz, wz = grid[0] // ratio, grid[1] // ratio
        body = unseal(side, b"side")
        if len(body) < _SIDE.size:
            raise PayloadError("truncated side")
        h, w, rate, z_mode, seq, z_seq = _SIDE.unpack(body[:_SIDE.size])
        if (h, w) != (hz, wz):
            raise PayloadError("hyper-latent size does not match the frame size")
        if rate >= c.rate_points:
            raise PayloadError(f"rate point {rate} not in this checkpoint")
        if z_mode == Z_INTRA:
            n = c.tables.z_cdf.length.shape[0]
            zi = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None, None], (n, hz, wz))
            z_sym = rans_decode(body[_SIDE.size:], zi, c.tables.z_cdf)
        elif z_mode == Z_REUSE and st.z_sym is not None and st.z_seq == z_seq \
                and st.z_sym.shape[1:] == (hz, wz):
            z_sym = st.z_sym
        else:
            st.regions = {}
            raise PayloadError("reference z missing (joined late or lost a frame): "
                               "waiting for an intra refresh")
        digest = side_digest(side)
        idx, mu = c.parameters(z_sym, rate)
        step = c.step(rate)
        res_idx = self._res_index(idx, rate)
        y_hat = np.zeros(mu.shape, np.float64)
        received = np.zeros(grid, bool)
        errors: dict[Any, str] = {}
        latents: dict[Any, np.ndarray] = {}
        kept: dict[int, _Kept] = {}
        needs_refresh = False
        if rest:
            mask = outside_mask(table_boxes, grid)
            try:
                y_hat[:, mask] = self._decode_rest(rest, seq, idx, res_idx, mu, step, mask,
                                                   rest_tag(digest, grid, table_boxes))
                received |= mask
            except PayloadError as e:
                errors["rest"] = str(e)
                needs_refresh = needs_refresh or isinstance(e, MissingReference)
        for key, (box, payload) in regions.items():
            lx0, ly0, lx1, ly1 = box
            sl = (slice(None), slice(ly0, ly1), slice(lx0, lx1))
            try:
                b = unseal(payload, region_tag(digest, box))
                if not b:
                    raise PayloadError("empty region payload")
                mode = b[0]
                if mode == INTRA:
                    sym = self._uncells(b[1:], idx[sl], res_idx[sl], np.zeros(box_shape(box), bool))
                    lat = sym * step + mu[sl]
                elif mode in (RESIDUAL, SKIP):
                    ref_rid, dx, dy, start = parse_ref_header(b)
                    # the reference is a region of the previous frame, as this decoder has it
                    ref = st.regions.get(ref_rid) if st.seq == seq - 1 else None
                    if ref is None:
                        raise MissingReference("reference region missing (joined late or lost "
                                               "a frame): waiting for an intra refresh")
                    pred, cover = predict(ref, box, dx, dy)
                    if mode == SKIP:
                        if not cover.all():
                            raise PayloadError("skipped region not covered by its reference")
                        lat = pred
                    else:
                        sym = self._unmasked_cells(b[start:], idx[sl], res_idx[sl], cover)
                        lat = sym * step + np.where(cover, pred, mu[sl])
                else:
                    raise PayloadError(f"unknown region mode {mode}")
            except PayloadError as e:
                errors[key] = str(e)
                needs_refresh = needs_refresh or isinstance(e, MissingReference)
                continue
            latents[key] = lat
            y_hat[sl] = lat
            received[ly0:ly1, lx0:lx1] = True
            kept[key] = _Kept(box, tasks.get(key, frozenset()), lat)
        st.seq, st.z_seq, st.z_sym, st.regions = seq, z_seq, z_sym, kept
        return {"z_sym": z_sym, "y_hat": y_hat, "received": received, "region_latents": latents,
                "errors": errors, "indexes": idx, "rate": rate, "needs_refresh": needs_refresh,
                "seq": seq}


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


def box_shape(box: LatentBox) -> tuple[int, int]:
    return box[3] - box[1], box[2] - box[0]


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
