"""Deterministic entropy coding of the region latents: fixed-point hyper decoder, rANS
substreams and the payload framing of ``side``, each region and ``rest``.

Why fixed point. The decoder must derive *exactly* the probabilities the encoder used, or
every symbol after the first disagreement decodes as garbage. A float hyper decoder does not
give that: CPU torch, ONNX Runtime and CUDA sum convolutions in different orders, so a scale
that lands near a table boundary picks a different CDF on another machine (rounding to a
coarser grid or adding a margin only makes that rarer, never impossible). So the probability
path ``z_hat -> h_s -> (scale index, mean)`` runs in exact integer arithmetic:

* ``update()`` of the model turns the trained float ``h_s`` into integer weights (power-of-two
  scale per layer, at most ``weight_bits`` bits) and integer biases, stores them in the
  checkpoint together with the CDF tables, and proves for every layer that no partial sum can
  exceed 2**52 (inputs and activations are clamped to bounds that make this hold).
* Activations are fixed point with ``frac_bits`` fractional bits; after each layer the integer
  accumulator is requantised with ``floor(acc * 2**-shift + 0.5)``.
* All of this is carried in float64 holding integers below 2**53: every product and every
  partial sum is then exact, so the result does not depend on summation order, blocking, FMA,
  thread count or the BLAS (numpy here; torch float64 on CPU or CUDA with cuDNN off gives the
  same bits, which the tests check).
* Scale indexes are integer comparisons against integer thresholds (one row per rate point:
  the scale table times that point's quantisation step); means are ``mean_int / 2**frac_bits``
  and steps are multiples of 2**-16, so ``y_hat = symbol * step + mean`` is exact in float64
  and the same everywhere.

The float layers that come after (``M(z)`` and ``g_s``) only shape pixels, never probabilities.

::

    z_sym (int, from side) --x 2^F + median--> fixed-point h_s --> scale_int | mean_int
    scale_int --count thresholds[rate] below--> CDF index      mean_int / 2^F --> mu
    y cells of one box: round((y - mu) / step[rate]) --rANS(CDF[index])--> body (intra.py)
    payload = [version u8][crc32(tag + body) u32][body]     tag = side digest + what/where

The tag makes a payload decode only with the side and the box it was made for: a damaged,
truncated, swapped or stale payload fails its own CRC and that region alone is reported.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from discover.sdk.codecs.learned import rans_check
from numpy.lib.stride_tricks import sliding_window_view

LATENT_STRIDE = 16  #: pixels per latent cell (g_a downsamples 4 x 2)
HYPER_STRIDE = 64  #: pixels per hyper-latent cell (h_a downsamples 2 x 2 more)
FORMAT_VERSION = 3  # 3: one side format for every frame (intra.py); 2: varint region reference
EXACT_LIMIT = 2.0**52  # every |partial sum| stays below this: float64 integers are exact

LatentBox = tuple[int, int, int, int]  # lx0, ly0, lx1, ly1 in latent cells, exclusive ends


class PayloadError(ValueError):
    """A payload that does not decode; the message is the short reason."""


class MissingReference(PayloadError):
    """A payload predicted from something this decoder does not have; an intra refresh
    (the sink asks for one) makes the stream decodable again."""


# -- geometry ---------------------------------------------------------------------------------

def padded_size(width: int, height: int) -> tuple[int, int]:
    """Frame size padded up to the hyper-latent grid (multiples of 64)."""
    return (-(-width // HYPER_STRIDE) * HYPER_STRIDE, -(-height // HYPER_STRIDE) * HYPER_STRIDE)


def latent_grid(width: int, height: int) -> tuple[int, int]:
    """``(rows, cols)`` of the latent y for a frame."""
    pw, ph = padded_size(width, height)
    return ph // LATENT_STRIDE, pw // LATENT_STRIDE


def hyper_grid(width: int, height: int) -> tuple[int, int]:
    """``(rows, cols)`` of the hyper-latent z for a frame."""
    pw, ph = padded_size(width, height)
    return ph // HYPER_STRIDE, pw // HYPER_STRIDE


def latent_box(box: Sequence[int], width: int, height: int) -> LatentBox | None:
    """The latent cells a pixel box covers (outwards to the 16 px grid); None if the box is
    empty or not inside the frame."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        return None
    s = LATENT_STRIDE
    return (x0 // s, y0 // s, -(-x1 // s), -(-y1 // s))


def outside_mask(boxes: Sequence[LatentBox], grid: tuple[int, int]) -> np.ndarray:
    """Cells of the latent grid outside every box (what ``rest`` carries)."""
    mask = np.ones(grid, dtype=bool)
    for lx0, ly0, lx1, ly1 in boxes:
        mask[ly0:ly1, lx0:lx1] = False
    return mask


# -- fixed-point hyper decoder ----------------------------------------------------------------

@dataclass(frozen=True)
class FixedPointLayer:
    """One integer (transposed) convolution of the fixed-point hyper decoder.

    ``weight`` and ``bias`` are integer-valued float64; the accumulator has scale
    ``2**(frac_bits + shift)`` and is requantised to ``2**frac_bits`` after the bias."""

    weight: np.ndarray  # conv (out, in, k, k); transposed (in, out, k, k), as in torch
    bias: np.ndarray
    shift: int
    transposed: bool
    stride: int
    padding: int
    output_padding: int
    relu: bool


@dataclass(frozen=True)
class HyperTables:
    """Everything the decoder needs to turn z symbols into CDF indexes and means, exactly."""

    layers: tuple[FixedPointLayer, ...]
    frac_bits: int
    act_limit: float  # activations (and outputs) are clamped to [-act_limit, act_limit]
    z_limit: int  # z symbols are clamped to [-z_limit, z_limit] on both sides
    z_median: np.ndarray  # integer-valued float64 per channel, scale 2**frac_bits
    thresholds: np.ndarray  # int64 (rates, L-1): scale table x step in fixed point (not the last)
    channels: int  # M: the first M outputs are scales, the next M means
    steps: np.ndarray  # float64 (rates,): quantisation step of each rate point (dyadic)


def _conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Plain convolution of one (C, H, W) map by im2col + matmul."""
    c = x.shape[0]
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    ho, wo = win.shape[1:3]
    cols = np.ascontiguousarray(win.transpose(0, 3, 4, 1, 2)).reshape(c * k * k, ho * wo)
    return (w.reshape(o, c * k * k) @ cols).reshape(o, ho, wo)


def _conv_transpose2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int,
                      out_pad: int) -> np.ndarray:
    """Transposed convolution (torch semantics) as one matmul plus a scatter-add per tap."""
    c, h, wd = x.shape
    _, o, k, _ = w.shape
    ho = (h - 1) * stride - 2 * pad + k + out_pad
    wo = (wd - 1) * stride - 2 * pad + k + out_pad
    full = np.zeros((o, max((h - 1) * stride + k, pad + ho), max((wd - 1) * stride + k, pad + wo)))
    prod = (w.transpose(2, 3, 1, 0).reshape(k * k * o, c) @ x.reshape(c, h * wd))
    prod = prod.reshape(k, k, o, h, wd)
    for ky in range(k):
        for kx in range(k):
            full[:, ky:ky + (h - 1) * stride + 1:stride, kx:kx + (wd - 1) * stride + 1:stride] \
                += prod[ky, kx]
    return full[:, pad:pad + ho, pad:pad + wo]


def _requantise(acc: Any, shift: int, relu: bool, limit: float, xp: Any) -> Any:
    """Exact ``round-half-up(acc / 2**shift)``, ReLU, clamp (numpy or torch, same ops)."""
    out = xp.floor(acc * (2.0 ** -shift) + 0.5)
    lo = 0.0 if relu else -limit
    return xp.clip(out, lo, limit) if xp is np else out.clamp(lo, limit)


def hyper_parameters(z_sym: np.ndarray, tables: HyperTables,
                     rate: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CDF indexes (int32, M x h x w) and means (float64) from z symbols (int, N x h' x w') at
    rate point ``rate`` (the index is that of sigma / step in the scale table).

    Exact integer arithmetic in float64 with numpy on the CPU: bit-identical on any machine."""
    x = np.clip(z_sym.astype(np.float64), -tables.z_limit, tables.z_limit)
    x = x * 2.0**tables.frac_bits + tables.z_median[:, None, None]
    for layer in tables.layers:
        if layer.transposed:
            acc = _conv_transpose2d(x, layer.weight, layer.stride, layer.padding,
                                    layer.output_padding)
        else:
            acc = _conv2d(x, layer.weight, layer.stride, layer.padding)
        acc += layer.bias[:, None, None]
        x = _requantise(acc, layer.shift, layer.relu, tables.act_limit, np)
    return _indexes_and_means(x, tables, rate)


def hyper_parameters_torch(z_sym: np.ndarray, tables: HyperTables, device: str = "cpu",
                           rate: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The same as :func:`hyper_parameters` with torch float64 convolutions on ``device``
    (cuDNN off, so no FFT or Winograd transforms that would round). A second, independent
    implementation: the tests require both to agree bit for bit."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(z_sym.astype(np.float64)).to(device)
    x = x.clamp(-tables.z_limit, tables.z_limit) * 2.0**tables.frac_bits
    x = (x + torch.from_numpy(tables.z_median).to(device)[:, None, None])[None]
    with torch.backends.cudnn.flags(enabled=False), torch.no_grad():
        for layer in tables.layers:
            w = torch.from_numpy(layer.weight).to(device)
            if layer.transposed:
                acc = F.conv_transpose2d(x, w, stride=layer.stride, padding=layer.padding,
                                         output_padding=layer.output_padding)
            else:
                acc = F.conv2d(x, w, stride=layer.stride, padding=layer.padding)
            acc = acc + torch.from_numpy(layer.bias).to(device)[None, :, None, None]
            x = _requantise(acc, layer.shift, layer.relu, tables.act_limit, torch)
    return _indexes_and_means(x[0].cpu().numpy(), tables, rate)


def _indexes_and_means(out: np.ndarray, tables: HyperTables,
                       rate: int) -> tuple[np.ndarray, np.ndarray]:
    m = tables.channels
    scales, means = out[:m], out[m:2 * m]
    # index = number of table scales strictly below sigma / step (compressai's build_indexes)
    idx = np.searchsorted(tables.thresholds[rate], scales.astype(np.int64), side="left")
    return idx.astype(np.int32), means * 2.0**-tables.frac_bits


def quantise_layer(weight: np.ndarray, bias: np.ndarray, *, transposed: bool, stride: int,
                   padding: int, output_padding: int, relu: bool, frac_bits: int,
                   weight_bits: int, in_limit: float) -> FixedPointLayer:
    """Integer version of one float layer: the finest power-of-two weight scale that keeps
    weights within ``weight_bits`` and every partial sum below 2**52 for inputs bounded by
    ``in_limit`` (the proof of exactness, done once when the tables are made)."""
    w = weight.astype(np.float64)
    b = bias.astype(np.float64)
    wmax = float(np.abs(w).max()) or 1.0
    shift = int(np.floor(np.log2((2 ** (weight_bits - 1) - 1) / wmax)))
    while True:
        wi = np.round(w * 2.0**shift)
        bi = np.round(b * 2.0 ** (frac_bits + shift))
        per_out = np.abs(wi).sum(axis=(0, 2, 3) if transposed else (1, 2, 3))
        bound = float((per_out * in_limit + np.abs(bi)).max())
        if np.abs(wi).max() < 2 ** (weight_bits - 1) and bound < EXACT_LIMIT:
            break
        shift -= 1
        if shift < -64:
            raise ValueError("hyper decoder weights too large for exact fixed point")
    return FixedPointLayer(wi, bi, shift, transposed, stride, padding, output_padding, relu)


# -- rANS -------------------------------------------------------------------------------------

@dataclass
class CdfTable:
    """Quantised CDFs (one row per distribution) as the rANS coder takes them."""

    cdf: np.ndarray  # int32 (L, max_len)
    length: np.ndarray  # int32 (L,)
    offset: np.ndarray  # int32 (L,)

    def __post_init__(self) -> None:
        self._rows = [row[:n].tolist() for row, n in zip(self.cdf, self.length, strict=True)]
        self._length = self.length.tolist()
        self._offset = self.offset.tolist()

    def subset(self, indexes: np.ndarray) -> tuple[list[int], list[list[int]], list[int],
                                                   list[int]]:
        """Indexes remapped onto the rows they use, and those rows (pybind copies every row
        it is given, so passing only the used ones keeps small regions cheap)."""
        used, remapped = np.unique(indexes, return_inverse=True)
        rows = [self._rows[i] for i in used.tolist()]
        return (remapped.astype(np.int32).ravel().tolist(), rows,
                [self._length[i] for i in used.tolist()], [self._offset[i] for i in used.tolist()])


#: the fewest symbols compressai's encoder is given (:func:`rans_encode`)
MIN_CODED = 3


def rans_encode(symbols: np.ndarray, indexes: np.ndarray, table: CdfTable) -> bytes:
    """rANS-code integer symbols, each with the CDF row its index names."""
    from compressai.ans import RansEncoder

    if symbols.size == 0:
        return b""
    idx, rows, lengths, offsets = table.subset(indexes)
    values = symbols.astype(np.int32).ravel().tolist()
    if len(values) < MIN_CODED:
        # compressai 1.2.8's encoder sizes its output at one 32-bit word per coded symbol, then
        # writes the words it renormalises plus the 8-byte final state backwards from the end:
        # with one or two symbols that can run before the buffer and corrupt the heap (an
        # abort, "double free or corruption", when the allocator notices; a simulation of its
        # coder on random symbol mixes, frequencies down to 1 and escapes, finds no overrun
        # from 3 symbols on). The last symbol is repeated up to 3: rANS decodes in coding
        # order, so a decoder that reads n symbols gets the same n values and never reaches
        # the padding.
        pad = MIN_CODED - len(values)
        values, idx = values + values[-1:] * pad, idx + idx[-1:] * pad
    return RansEncoder().encode_with_indexes(values, idx, rows, lengths, offsets)


def rans_decode(data: bytes, indexes: np.ndarray, table: CdfTable) -> np.ndarray:
    """Inverse of :func:`rans_encode`; ``indexes`` fixes the symbol count and shape.

    Never reads outside ``data`` (plus a zero guard of one word a symbol), whatever the bytes:
    a CRC-32 is no MAC, so a forged payload with a valid CRC gets here on an unsigned stream.
    compressai's C++ decoder runs with the escape symbol made impossible, which bounds its
    reads; only when a decoded symbol is an escape (rare for honest streams) does the checking
    decoder of :mod:`rans_check` redo the payload (:class:`PayloadError` if it is forged)."""
    from compressai.ans import RansDecoder

    n = int(indexes.size)
    if n == 0:
        if data:
            raise PayloadError("bytes for an empty cell set")
        return np.zeros(indexes.shape, np.int32)
    if len(data) < 8 or len(data) % 4:
        raise PayloadError("bad length")
    idx, rows, lengths, offsets = table.subset(indexes)
    guard = 4 * n + 64  # each symbol reads at most one 32-bit word without escapes
    safe_rows, safe_lengths = rans_check.no_escape_rows(rows, lengths)
    values = np.asarray(RansDecoder().decode_with_indexes(
        data + bytes(guard), idx, safe_rows, safe_lengths, offsets), dtype=np.int32)
    if rans_check.escape_seen(values, np.asarray(idx), lengths, offsets):
        try:
            values = np.asarray(rans_check.python_decode(data, idx, rows, lengths, offsets,
                                                         spare=guard // 4), dtype=np.int32)
        except rans_check.RansError as e:
            raise PayloadError(str(e)) from None
    return values.reshape(indexes.shape)


# -- payload framing --------------------------------------------------------------------------

def seal(body: bytes, tag: bytes) -> bytes:
    """``[version][crc32(tag + body)][body]``."""
    return struct.pack(">BI", FORMAT_VERSION, zlib.crc32(body, zlib.crc32(tag))) + body


def unseal(payload: bytes, tag: bytes) -> bytes:
    """The body of a sealed payload; :class:`PayloadError` if it is damaged or not for ``tag``."""
    if not isinstance(payload, (bytes, bytearray, memoryview)) or len(payload) < 5:
        raise PayloadError("truncated")
    payload = bytes(payload)
    version, crc = struct.unpack(">BI", payload[:5])
    if version != FORMAT_VERSION:
        raise PayloadError(f"unknown format version {version}")
    body = payload[5:]
    if zlib.crc32(body, zlib.crc32(tag)) != crc:
        raise PayloadError("checksum mismatch (damaged, truncated or not for this frame/box)")
    return body


def region_tag(side_digest: bytes, box: LatentBox) -> bytes:
    return side_digest + b"R" + struct.pack(">4H", *box)


def rest_tag(side_digest: bytes, grid: tuple[int, int], boxes: Sequence[LatentBox]) -> bytes:
    return side_digest + b"T" + struct.pack(f">2H{4 * len(boxes)}H", *grid,
                                            *[v for b in boxes for v in b])


def side_digest(side: bytes) -> bytes:
    return struct.pack(">I", zlib.crc32(side))


# -- the coder --------------------------------------------------------------------------------

@dataclass
class CodingTables:
    """The integer tables a checkpoint ships: fixed-point hyper decoder and both CDF sets."""

    hyper: HyperTables
    z_cdf: CdfTable  # one row per z channel
    y_cdf: CdfTable  # one row per scale of the scale table


class LatentCoder:
    """A checkpoint's integer coding tables and the exact probability path over them: the
    rate points' steps and, from z symbols, every y cell's CDF index and mean. The payloads
    made with them are ``intra.py``'s (and ``temporal.py``'s predicted ones)."""

    def __init__(self, tables: CodingTables) -> None:
        self.tables = tables

    @property
    def rate_points(self) -> int:
        return int(self.tables.hyper.steps.shape[0])

    def step(self, rate: int) -> float:
        """Quantisation step of a rate point: ``y_hat = symbol * step + mu``."""
        return float(self.tables.hyper.steps[rate])

    def parameters(self, z_sym: np.ndarray, rate: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(index, mu)`` of every y cell, exactly, from the z symbols."""
        return hyper_parameters(z_sym, self.tables.hyper, rate)
