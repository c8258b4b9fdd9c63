"""The DISCOVER region codec network (seed §3.2): ELIC transforms, a mean-scale hyperprior that
takes its probabilities from z alone, the global-information network M(z), and a decoder g_s
that rebuilds the frame (or the Stable Diffusion latent) from the masked latent and M(z).

::

    x (RGB in [0, 1], padded to /64)
      |
     g_a   conv5/2, RB x r, conv5/2, RB x r, Attn, conv5/2, RB x r, conv5/2, Attn
      |
      y  (M x H/16 x W/16) -------------------------------------------+
      |                                                               |
     h_a   conv3, ReLU, conv5/2, ReLU, conv5/2                         |
      |                                                               |
      z  (N x H/64 x W/64) --Q--> z_hat --EntropyBottleneck--> side    |
                                  |                                   |
                   +--------------+---------------+                   |
                   |                              |                   |
                  h_s   deconv5/2, ReLU,          M   deconv5/2, ReLU, |
                        deconv5/2, ReLU, conv3        deconv5/2, ReLU, |
                   |    (fixed point when coding)     conv3            |
              scales, mu                          |                   |
                   |                              g  (G x H/16 x W/16)  |
                   v                              |                   |
      y --Q(y - mu) + mu--> y_hat --GaussianConditional--> region / rest substreams
                              |                   |
              y_hat * keep, keep, g --concat--> g_s --> x_hat  3 x H x W     (head "pixels")
                                                   or z_c    4 x H/8 x W/8 (head "sd_latent")

``keep`` is 1 on the latent cells that arrived (the task boxes, all of them with ``rest``) and 0
elsewhere; g_s also sees it as a channel, so a zero latent and a missing one differ. There is no
spatial or channel context model: every y cell's distribution depends on z only, so the cells
of one box decode without any other box (region independence), and the path that yields the
probabilities is the small, exactly reproducible fixed-point h_s (see ``entropy.py``).

Two sizes from one definition (:data:`PRESETS`): ``paper`` (N=192, M=320, three residual
bottleneck blocks per stage, as ELIC) and ``small`` (N=64, M=96, one block per stage), which
trains and codes on a 2-core CPU; ``tiny`` is for tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import AttentionBlock
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from discover.sdk.codecs.learned.entropy import (
    HYPER_STRIDE,
    CdfTable,
    CodingTables,
    HyperTables,
    LatentBox,
    LatentCoder,
    quantise_layer,
)
from discover.sdk.codecs.learned.intra import IntraCoder
from torch import Tensor

try:  # compressai >= 1.2.9 moved it into layers
    from compressai.layers import ResidualBottleneckBlock  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the compressai version
    from compressai.models.sensetime import ResidualBottleneckBlock

Head = Literal["pixels", "sd_latent"]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and options of :class:`DiscoverCodecModel` (saved as ``config.json``'s ``model``)."""

    N: int = 64  #: channels of the transforms and of z
    M: int = 96  #: channels of the latent y
    G: int | None = None  #: channels of M(z); None means M
    res_blocks: int = 1  #: residual bottleneck blocks per stage (ELIC: 3)
    head: Head = "pixels"
    mask_channel: bool = True  #: g_s sees which cells arrived
    scale_min: float = 0.11  #: scale table (compressai's default)
    scale_max: float = 256.0
    scale_levels: int = 64
    frac_bits: int = 10  #: fixed-point fraction bits of the hyper decoder's activations
    weight_bits: int = 16  #: bits of the fixed-point hyper decoder's weights
    z_limit: int = 4096  #: z symbols are clamped to +-z_limit
    act_bits: int = 14  #: fixed-point activations are clamped to +-2**(frac_bits + act_bits)
    #: initial quantisation step of y per rate point, lowest rate first (the trained steps
    #: live in the weights as ``log_steps``); one model serves every rate point
    steps: tuple[float, ...] = (1.0,)
    extra: dict[str, Any] = field(default_factory=dict)  #: free-form notes

    @property
    def global_channels(self) -> int:
        return self.G or self.M

    @property
    def rate_points(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        data = dict(data)
        if "steps" in data:
            data["steps"] = tuple(float(v) for v in data["steps"])
            if not data["steps"] or min(data["steps"]) <= 0:
                raise ValueError("steps must be a non-empty list of positive numbers")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model size '{name}'; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # ELIC's transforms as published (seed §4.1.1 uses ELIC as the base codec).
    "paper": {"N": 192, "M": 320, "res_blocks": 3},
    # 2-core CPU: N=64 makes every N x N convolution ~9x cheaper than N=192 and one residual
    # block per stage (not three) halves the rest; M=96 latent channels still cover the low to
    # mid rates task substreams use. Measured here on a busy 2-core CPU, 768x576 frame, one
    # torch thread: small (2.5 M parameters) encodes in ~0.3 s and decodes (4 regions) in
    # ~0.5 s, a training step (8 x 256^2) takes ~1.5 s; paper (26 M) takes 4-5 s / 10-19 s.
    "small": {"N": 64, "M": 96, "res_blocks": 1},
    # unit tests: runs in milliseconds on 64-128 px images.
    "tiny": {"N": 16, "M": 16, "res_blocks": 1},
}


def ste_round(x: Tensor) -> Tensor:
    """Round with a straight-through gradient (the decoder trains on what it will see)."""
    return (torch.round(x) - x).detach() + x


def pad_to_grid(x: Tensor, multiple: int = HYPER_STRIDE) -> Tensor:
    """Replicate-pad an (B, C, H, W) image on the right and bottom to multiples of 64."""
    h, w = x.shape[-2:]
    ph, pw = -(-h // multiple) * multiple - h, -(-w // multiple) * multiple - w
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def _blocks(n: int, ch: int) -> list[nn.Module]:
    return [ResidualBottleneckBlock(ch, ch) for _ in range(n)]


class FixedPointHyper(nn.Module):
    """Integer tables of the hyper decoder, made by :meth:`DiscoverCodecModel.update` and stored
    as buffers, so a checkpoint carries them and loading never recomputes them."""

    def __init__(self, h_s: nn.Sequential, N: int, levels: int, rates: int = 1) -> None:
        super().__init__()
        self._specs: list[tuple[bool, int, int, int, bool]] = []
        mods = list(h_s)
        for i, m in enumerate(mods):
            if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                continue
            relu = i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
            t = isinstance(m, nn.ConvTranspose2d)
            self._specs.append((t, m.stride[0], m.padding[0],
                                m.output_padding[0] if t else 0, relu))
            j = len(self._specs) - 1
            self.register_buffer(f"weight{j}", torch.zeros(m.weight.shape, dtype=torch.int32))
            self.register_buffer(f"bias{j}", torch.zeros(m.weight.shape[1 if t else 0],
                                                        dtype=torch.int64))
        self.register_buffer("shifts", torch.zeros(len(self._specs), dtype=torch.int64))
        self.register_buffer("z_median", torch.zeros(N, dtype=torch.int64))
        # per rate point: the scale table times its step (index of sigma / step), and the step
        self.register_buffer("thresholds", torch.zeros(rates, levels - 1, dtype=torch.int64))
        self.register_buffer("steps", torch.ones(rates, dtype=torch.float64))
        self.register_buffer("ready", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def make(self, h_s: nn.Sequential, medians: Tensor, scale_table: Tensor,
             cfg: ModelConfig, steps: Tensor) -> None:
        """Quantise the float h_s, the z medians and the scale table into integer tables, and
        freeze the quantisation steps (rounded to multiples of 2**-16, float64)."""
        fb = cfg.frac_bits
        in_limit = cfg.z_limit * 2.0**fb + float(np.ceil(np.abs(medians.double().numpy()).max()
                                                          * 2.0**fb)) + 1
        act_limit = 2.0 ** (fb + cfg.act_bits)
        convs = [m for m in h_s if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        for j, (m, (t, s, p, op, relu)) in enumerate(zip(convs, self._specs, strict=True)):
            layer = quantise_layer(m.weight.double().cpu().numpy(),
                                   m.bias.double().cpu().numpy(), transposed=t, stride=s,
                                   padding=p, output_padding=op, relu=relu, frac_bits=fb,
                                   weight_bits=cfg.weight_bits, in_limit=in_limit)
            getattr(self, f"weight{j}").copy_(torch.from_numpy(layer.weight).to(torch.int32))
            getattr(self, f"bias{j}").copy_(torch.from_numpy(layer.bias).to(torch.int64))
            self.shifts[j] = layer.shift
            in_limit = act_limit
        self.z_median.copy_(torch.round(medians.double().reshape(-1) * 2.0**fb).to(torch.int64))
        frozen = torch.round(steps.detach().double().cpu() * 2.0**16) / 2.0**16
        self.steps.copy_(frozen)
        self.thresholds.copy_(torch.floor(scale_table[:-1].double()[None] * frozen[:, None]
                                          * 2.0**fb).to(torch.int64))
        self.ready.fill_(1)

    def tables(self, cfg: ModelConfig) -> HyperTables:
        """The numpy view the coder runs (see ``entropy.hyper_parameters``)."""
        if not int(self.ready):
            raise RuntimeError("fixed-point hyper decoder not made; call model.update() first")
        layers = []
        from discover.sdk.codecs.learned.entropy import FixedPointLayer

        for j, (t, s, p, op, relu) in enumerate(self._specs):
            layers.append(FixedPointLayer(
                getattr(self, f"weight{j}").cpu().numpy().astype(np.float64),
                getattr(self, f"bias{j}").cpu().numpy().astype(np.float64),
                int(self.shifts[j]), t, s, p, op, relu))
        return HyperTables(tuple(layers), cfg.frac_bits, 2.0 ** (cfg.frac_bits + cfg.act_bits),
                           cfg.z_limit, self.z_median.cpu().numpy().astype(np.float64),
                           self.thresholds.cpu().numpy(), cfg.M, self.steps.cpu().numpy())


class DiscoverCodecModel(CompressionModel):
    """ELIC-structured region codec. CompressAI API: ``forward`` for training, ``compress`` /
    ``decompress`` for real bitstreams (one frame, boxes on the latent grid), all returning
    dicts; ``from_pretrained`` / ``save_pretrained`` for checkpoint folders."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or ModelConfig()
        N, M, G, r = c.N, c.M, c.global_channels, c.res_blocks
        self.g_a = nn.Sequential(
            conv(3, N, 5, 2), *_blocks(r, N),
            conv(N, N, 5, 2), *_blocks(r, N), AttentionBlock(N),
            conv(N, N, 5, 2), *_blocks(r, N),
            conv(N, M, 5, 2), AttentionBlock(M),
        )
        self.h_a = nn.Sequential(
            conv(M, N, 3, 1), nn.ReLU(inplace=True),
            conv(N, N, 5, 2), nn.ReLU(inplace=True),
            conv(N, N, 5, 2),
        )
        self.h_s = nn.Sequential(
            deconv(N, N, 5, 2), nn.ReLU(inplace=True),
            deconv(N, N * 3 // 2, 5, 2), nn.ReLU(inplace=True),
            conv(N * 3 // 2, 2 * M, 3, 1),
        )
        # M(z): "two transposed convolutional layers and one convolutional layer" (seed §3.2)
        self.global_net = nn.Sequential(
            deconv(N, N, 5, 2), nn.ReLU(inplace=True),
            deconv(N, G, 5, 2), nn.ReLU(inplace=True),
            conv(G, G, 3, 1),
        )
        fuse = conv(M + G + (1 if c.mask_channel else 0), M, 3, 1)
        if c.head == "pixels":
            self.g_s = nn.Sequential(
                fuse, AttentionBlock(M),
                deconv(M, N, 5, 2), *_blocks(r, N),
                deconv(N, N, 5, 2), AttentionBlock(N), *_blocks(r, N),
                deconv(N, N, 5, 2), *_blocks(r, N),
                deconv(N, 3, 5, 2),
            )
        elif c.head == "sd_latent":
            # ELIC's decoder without its last two upsampling stages ends at 1/8 resolution,
            # the size of the Stable Diffusion latent (seed §4.1.1).
            self.g_s = nn.Sequential(
                fuse, AttentionBlock(M),
                deconv(M, N, 5, 2), *_blocks(r, N), AttentionBlock(N), *_blocks(r, N),
                conv(N, 4, 3, 1),
            )
        else:
            raise ValueError(f"unknown decoder head '{c.head}'")
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        # quantisation step per rate point (Cui et al.'s gain units, reduced to one scalar
        # each): y is quantised as round((y - mu) / step); trained jointly with the lambdas
        self.log_steps = nn.Parameter(torch.log(torch.tensor(c.steps, dtype=torch.float32)))
        self.hyper_fixed = FixedPointHyper(self.h_s, N, c.scale_levels, c.rate_points)
        # temporal coding: residual cells use the hyperprior's scale index minus these
        # (per rate point and channel; fitted on consecutive frames, see temporal.py)
        self.register_buffer("residual_offsets", torch.zeros(c.rate_points, M, dtype=torch.int64))
        self._coder: LatentCoder | None = None

    # -- pieces -----------------------------------------------------------------------------

    @property
    def out_stride(self) -> int:
        """Pixels per output sample: 1 for pixels, 8 for the SD latent."""
        return 1 if self.config.head == "pixels" else 8

    def scale_table(self) -> Tensor:
        c = self.config
        return torch.exp(torch.linspace(math.log(c.scale_min), math.log(c.scale_max),
                                        c.scale_levels))

    def z_medians(self) -> Tensor:
        return self.entropy_bottleneck._get_medians().detach()  # (N, 1, 1)

    def global_info(self, z_hat: Tensor) -> Tensor:
        """M(z_hat): coarse global information at the latent resolution."""
        return self.global_net(z_hat)

    def synthesize(self, y_hat: Tensor, keep: Tensor, g: Tensor) -> Tensor:
        """g_s on the masked latent: ``y_hat`` must already be zero where ``keep`` is 0."""
        parts = [y_hat, keep, g] if self.config.mask_channel else [y_hat, g]
        return self.g_s(torch.cat(parts, dim=1))

    # -- training ---------------------------------------------------------------------------

    def forward(self, x: Tensor, keep: Tensor | None = None,
                rate: Tensor | None = None) -> dict[str, Any]:
        """Training pass. ``keep`` (B, 1, H/16, W/16) masks y before g_s (stage II); ``rate``
        (B,) picks each sample's rate point (default the first); likelihoods are of the whole
        latent, quantised with that rate point's step."""
        y = self.g_a(x)
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        med = self.entropy_bottleneck._get_medians()
        z_hat = ste_round(z - med) + med
        scales, means = self.h_s(z_hat).chunk(2, dim=1)
        if rate is None:
            rate = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        step = torch.exp(self.log_steps)[rate].view(-1, 1, 1, 1)
        _, y_likelihoods = self.gaussian_conditional(y / step, scales / step, means / step)
        y_hat = ste_round((y - means) / step) * step + means
        if keep is None:
            keep = torch.ones_like(y_hat[:, :1])
        out = self.synthesize(y_hat * keep, keep, self.global_info(z_hat))
        return {"x_hat": out, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
                "y_hat": y_hat, "keep": keep}

    # -- coding tables ----------------------------------------------------------------------

    def update(self, scale_table: Tensor | None = None, force: bool = True,
               update_quantiles: bool = False) -> bool:
        """Make the integer coding tables from the current weights: the z and y CDFs and the
        fixed-point hyper decoder. Done once before saving; loading restores them as is."""
        table = self.scale_table() if scale_table is None else scale_table
        updated = super().update(scale_table=table, force=force,
                                 update_quantiles=update_quantiles)
        self.hyper_fixed.make(self.h_s, self.z_medians().cpu(),
                              self.gaussian_conditional.scale_table.cpu(), self.config,
                              torch.exp(self.log_steps.detach().cpu()))
        self._coder = None
        return updated

    @property
    def coding_ready(self) -> bool:
        return bool(int(self.hyper_fixed.ready)) and \
            self.gaussian_conditional._quantized_cdf.numel() > 0

    def coder(self) -> LatentCoder:
        """The entropy coder over this model's integer tables (cached)."""
        if self._coder is None:
            eb, gc = self.entropy_bottleneck, self.gaussian_conditional
            if not self.coding_ready:
                raise RuntimeError("coding tables missing; call model.update() first")

            def cdf(m: nn.Module) -> CdfTable:
                return CdfTable(m._quantized_cdf.cpu().numpy().astype(np.int32),
                                m._cdf_length.cpu().numpy().astype(np.int32),
                                m._offset.cpu().numpy().astype(np.int32))

            self._coder = LatentCoder(CodingTables(self.hyper_fixed.tables(self.config),
                                                   cdf(eb), cdf(gc)))
        return self._coder

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> Any:
        self._coder = None
        return super().load_state_dict(state_dict, strict=strict)

    # -- real bitstreams --------------------------------------------------------------------

    def analysis(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The float edge half: ``y = g_a(x)``, ``z = h_a(y) - medians`` (what gets rounded).
        ONNX Runtime can stand in for it (``onnx_edge.py``)."""
        y = self.g_a(x)
        return y, self.h_a(y) - self.z_medians()

    @torch.no_grad()
    def latents(self, x: Tensor, analysis: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``y`` (float64 M x h x w) and the z symbols (int32 N x h' x w') of one padded image,
        from :meth:`analysis` or a stand-in for it (tensors or arrays)."""
        y, z = (analysis or self.analysis)(x)
        y, z = torch.as_tensor(y), torch.as_tensor(z)
        zl = self.config.z_limit
        z_sym = torch.round(z).clamp(-zl, zl)[0].cpu().numpy().astype(np.int32)
        return y[0].double().cpu().numpy(), z_sym

    def z_hat(self, z_sym: np.ndarray) -> Tensor:
        """The dequantised hyper-latent (1, N, h', w') of z symbols, as M(z) takes it."""
        return torch.from_numpy(z_sym.astype(np.float32))[None] + self.z_medians().cpu()[None]

    @torch.no_grad()
    def compress(self, x: Tensor, boxes: list[LatentBox] | None = None,
                 send_rest: bool = True, rate: int = 0, analysis: Any = None,
                 seq: int = 0) -> dict[str, Any]:
        """Code one padded image (1, 3, H, W) with H, W multiples of 64 at rate point ``rate``
        (0 = lowest; it travels in ``side``, so it may change from frame to frame) as intra
        frame ``seq`` of a stream (:class:`IntraCoder`, the codec's own format).

        Returns ``side`` (z), ``regions`` (one payload per box, in order), ``rest`` (cells
        outside all boxes, or None) and, for checks, ``y_hat`` (the exact decoded latent,
        float64 M x h x w), ``z_sym``, ``indexes``. ``analysis`` replaces :meth:`analysis`
        (x -> y, z - medians as tensors or arrays), e.g. an ONNX Runtime session."""
        boxes = list(boxes or [])
        y64, z_sym = self.latents(x, analysis)
        f = IntraCoder(self.coder()).encode(y64, z_sym, dict(enumerate(boxes)), send_rest,
                                            rate, seq)
        return {"side": f.side.payload, "regions": [f.regions[i] for i in range(len(boxes))],
                "rest": f.rest, "y_hat": f.y_hat, "z_sym": z_sym, "indexes": f.side.idx,
                "rate": rate}

    def decompress(self, side: bytes, regions: dict[Any, tuple[LatentBox, bytes]],
                   rest: bytes | None, grid: tuple[int, int],
                   table_boxes: list[LatentBox]) -> dict[str, Any]:
        """Entropy-decode what arrived of one intra frame (no synthesis; the inverse of
        :meth:`compress`).

        ``regions`` maps a key to (latent box, payload); ``table_boxes`` are all boxes of the
        frame (they define the rest). Raises :class:`PayloadError` if the side is bad; a bad
        region or rest is reported in ``errors`` (key, or ``"rest"``) and skipped. Returns
        ``z_hat`` (tensor), ``y_hat`` (float64 M x h x w, zero where nothing arrived),
        ``received`` (bool h x w), ``region_latents`` {key: float64 M x bh x bw}."""
        f = IntraCoder(self.coder()).decode(side, regions, rest, grid, table_boxes)
        return {"z_hat": self.z_hat(f.side.z_sym), "y_hat": f.y_hat, "received": f.received,
                "region_latents": f.region_latents, "errors": f.errors,
                "indexes": f.side.idx, "rate": f.side.rate}

    # -- checkpoints ------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path, training: dict[str, Any] | None = None) -> str:
        """Write ``config.json`` + weights to ``folder``; returns the content hash."""
        from discover.sdk.codecs.learned.checkpoint import save_pretrained

        return save_pretrained(self, folder, training=training)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> DiscoverCodecModel:
        """Load a folder written by :meth:`save_pretrained` (see ``checkpoint.py``)."""
        from discover.sdk.codecs.learned.checkpoint import load_pretrained

        return load_pretrained(folder, device=device).model
