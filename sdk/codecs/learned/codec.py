"""``learned``: the DISCOVER region codec (seed §3.2) behind the codec interface.

Every task region's latent is its own substream, decodable given only ``side``; ``rest``
carries the latent cells outside all regions. Boxes are snapped to the 16 px latent grid
(``align``). Probabilities come from z alone through an exact fixed-point hyper decoder, so any
machine decodes the same symbols (see ``entropy.py``). The payloads are the intra coder's
(``intra.py``); ``codec.temporal`` (``temporal.py``, a layer over it) may predict a region or
the rest from the previous frame and reuse z; with it off every frame is intra::

    frame --pad /64--> g_a --> y --h_a--> z --rANS--> side  [ver|crc|h,w,rate,z mode,seq|z]
                                          |
                           fixed-point h_s(z): CDF index, mu per y cell
                                          |
    y cells in box r  --rANS--> regions[r]   (sealed with a CRC over side digest + box)
    y cells elsewhere --rANS--> rest          (only when asked)

    decode (exactly what compress returned, as it arrived): side -> z -> (index, mu); each
    region and rest decode on their own (a bad one is reported in ``errors`` and skipped);
    M(z) once; then
      region_pixels[r] = g_s(that region's cells only, M(z)) on the box plus ``region_context``
                         cells around it, cropped to the box: the same whatever else arrived
      background       = g_s(all cells that arrived, M(z)) over the whole frame
      x_hat            = background with rest; without rest, background with the region
                         crops pasted (so the task pixels never depend on what else came)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from discover.sdk.codecs.base import (
    CODECS,
    Codec,
    CodecConfig,
    CodedFrame,
    Compressed,
    Decoded,
    FrameStats,
    SubstreamError,
)
from discover.sdk.codecs.learned.entropy import (
    LATENT_STRIDE,
    PayloadError,
    latent_box,
    latent_grid,
)
from discover.sdk.codecs.learned.intra import LatentFrame
from discover.sdk.codecs.learned.temporal import TemporalCoder, TemporalConfig
from discover.sdk.errors import DiscoverError
from discover.sdk.regions import Region
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from discover.sdk.codecs.learned.model import DiscoverCodecModel

DEFAULT_CHECKPOINT = "small"

#: One learned-codec call at a time per process. Several threads running torch forward passes
#: at once (the demo's edge and two sinks, a multi-camera edge) twice left a sink's g_s
#: convolution spinning at full CPU without end on the 2-core machine. Serialising costs
#: throughput where threads share a process (the demo: edge 3.0 -> 1.05 frames/s, sinks
#: 1.6 -> 1.0); separate edge and sink processes, as deployed, are not affected.
MODEL_LOCK = threading.RLock()
#: region modes by their mode byte (intra.INTRA, temporal.RESIDUAL, temporal.SKIP), the names
#: FrameStats.modes counts them under
REGION_MODES = ("intra", "residual", "skip")


class LearnedConfig(CodecConfig):
    type: Literal["learned"] = "learned"
    checkpoint: Path | None = Field(
        None, description="checkpoint folder (config.json + weights); default: the shipped "
                          "sdk/codecs/learned/checkpoints/<name>")
    name: str = Field(DEFAULT_CHECKPOINT, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="shipped checkpoint used when checkpoint is not set")
    quality: int | None = Field(
        None, ge=1, le=255, description="rate point of the checkpoint, 1 = lowest rate (see "
                                        "'discover bench codec'); default: its middle one")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="where g_a/g_s run (the probability path always runs exactly on CPU)")
    region_context: int = Field(
        4, ge=0, le=32, description="latent cells of M(z) context decoded around a region")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    temporal: TemporalConfig = Field(default_factory=TemporalConfig,
                                     description="prediction between frames (video)")
    edge_runtime: Literal["torch", "onnx"] = Field(
        "torch", description="what runs the encoder's g_a/h_a: torch, or ONNX Runtime on an "
                             "export of the same checkpoint (discover/train/export_onnx.py; CUDA "
                             "provider when codec.device allows and has it, else CPU)")
    onnx: Path | None = Field(
        None, description="the ONNX export for edge_runtime onnx; default: edge.onnx in the "
                          "checkpoint folder")


def _import_model() -> Any:
    try:
        from discover.sdk.codecs.learned import checkpoint, model
    except ImportError as e:
        raise DiscoverError(f"the 'learned' codec needs torch and compressai ({e}); install "
                            "them with: pip install 'discover-sdk[learned]'") from None
    return model, checkpoint


@CODECS.register
class LearnedCodec(Codec):
    key = "learned"
    Config = LearnedConfig
    config: LearnedConfig
    align = LATENT_STRIDE

    def __init__(self, config: LearnedConfig, model: DiscoverCodecModel | None = None) -> None:
        """Load the configured checkpoint, or use ``model`` (tests, benchmarks, training)."""
        super().__init__(config)
        model_mod, ckpt = _import_model()
        import torch

        if config.threads:
            torch.set_num_threads(config.threads)
        dev = config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        elif dev == "cuda" and not torch.cuda.is_available():
            raise DiscoverError("codec.device is cuda but torch sees no CUDA device; "
                                "set codec.device to cpu or auto")
        self.device = torch.device(dev)
        if model is None:
            folder = config.checkpoint or ckpt.CHECKPOINT_ROOT / config.name
            loaded = ckpt.load_pretrained(folder, device=dev)
            model, self._hash = loaded.model, loaded.hash
        else:
            if not model.coding_ready:
                model.update(force=True)
            self._hash = ckpt.model_hash(model)
            model = model.eval().to(self.device)
        self.model: DiscoverCodecModel = model
        points = model.config.rate_points
        if config.quality is not None and config.quality > points:
            raise DiscoverError(f"codec.quality {config.quality} is out of range: this "
                                f"checkpoint has rate points 1..{points}")
        self.rate = (config.quality - 1) if config.quality else points // 2
        #: the stream's frame coder: every frame through the intra coder, predicted payloads
        #: and references from the temporal layer (temporal off: every frame intra)
        self.frames = TemporalCoder(self.model.coder(), self.model.residual_offsets.cpu().numpy(),
                                    config.temporal)
        self._analysis: Any = None  # x -> (y, z); None: the model's own (torch)
        if config.edge_runtime == "onnx":
            from discover.sdk.codecs.learned.onnx_edge import ONNX_NAME, OnnxAnalysis

            folder = config.checkpoint or ckpt.CHECKPOINT_ROOT / config.name
            self._analysis = OnnxAnalysis(config.onnx or folder / ONNX_NAME, config.device,
                                          config.threads, self._hash, folder)

    def checkpoint_hash(self) -> str | None:
        return self._hash

    def descriptor(self) -> dict[str, Any]:
        """The stream's codec entry, without what only the edge uses (its encoder runtime):
        a sink builds its decoder from this and must not look for the edge's ONNX file."""
        d = super().descriptor()
        for key in ("edge_runtime", "onnx"):
            d["config"].pop(key, None)
        return d

    # -- helpers ----------------------------------------------------------------------------

    def _to_tensor(self, frame: np.ndarray) -> torch.Tensor:
        import torch
        from discover.sdk.codecs.learned.model import pad_to_grid

        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {frame.shape} {frame.dtype}")
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        return pad_to_grid(x)

    @staticmethod
    def _to_bgr(x: torch.Tensor) -> np.ndarray:
        img = (x[0].clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
        return np.ascontiguousarray(img[:, :, ::-1])

    # -- API --------------------------------------------------------------------------------

    @property
    def predictive(self) -> bool:
        return self.config.temporal.enabled  # regions and rest predicted from references

    def request_refresh(self) -> None:
        """A sink lost its references: make the next frame intra."""
        self.frames.request_refresh()

    def compress(self, frame: np.ndarray, regions: list[Region], send_rest: bool) -> Compressed:
        with MODEL_LOCK:
            return self._compress(frame, regions, send_rest)

    def decompress(self, coded: CodedFrame | Mapping[str, Any]) -> Decoded:
        with MODEL_LOCK:
            return self._decompress(CodedFrame.coerce(coded))

    def _compress(self, frame: np.ndarray, regions: list[Region], send_rest: bool) -> Compressed:
        import torch

        h, w = frame.shape[:2]
        boxes: dict[int, tuple[int, int, int, int]] = {}
        for r in regions:
            lb = latent_box(r.box, w, h)
            if lb is None:
                raise ValueError(f"region {r.rid} box {r.box} is not inside the {w}x{h} frame")
            boxes[r.rid] = lb
        with torch.inference_mode():
            y, z_sym = self.model.latents(self._to_tensor(frame), self._analysis)
        f = self.frames.encode(y, z_sym, boxes, {r.rid: frozenset(r.tasks) for r in regions},
                               send_rest, self.rate)
        modes: dict[str, int] = {}
        for md in f.modes.values():
            modes[REGION_MODES[md]] = modes.get(REGION_MODES[md], 0) + 1
        return Compressed(side=f.side.payload, rest=f.rest, regions=f.regions,
                          stats=FrameStats(intra=f.intra, modes=modes,
                                           extra={"z_new": f.side.z_new}))

    def _decompress(self, coded: CodedFrame) -> Decoded:
        import torch

        w, h = coded.size
        grid = latent_grid(w, h)
        table: list[Region] = coded.table
        boxes: dict[int, tuple[int, int, int, int]] = {}  # latent cells
        px: dict[int, tuple[int, int, int, int]] = {}  # pixels
        for r in table:
            lb = latent_box(r.box, w, h)
            if lb is not None:
                boxes[r.rid], px[r.rid] = lb, tuple(int(v) for v in r.box)
        errors: dict[int, str] = {}
        wanted: dict[int, tuple[tuple[int, int, int, int], bytes]] = {}
        in_table = {r.rid for r in table}
        for rid, blob in coded.regions.items():
            if rid not in in_table:
                errors[rid] = "region not in the region table"
            elif rid not in boxes:
                errors[rid] = "region box is not inside the frame"
            else:
                wanted[rid] = (boxes[rid], blob)
        try:
            dec = self.frames.decode(coded.side, wanted, coded.rest, grid, list(boxes.values()),
                                     {r.rid: frozenset(r.tasks) for r in table})
        except PayloadError as e:
            errors[SubstreamError.SIDE] = f"side did not decode ({e})"
            for rid in wanted:
                errors[rid] = "no usable side information for this frame"
            return Decoded(x_hat=np.full((h, w, 3), 128, np.uint8), errors=errors,
                           needs_refresh=self.config.temporal.enabled,
                           extra={"region_latents": {}})
        for key, reason in dec.errors.items():
            errors[SubstreamError.REST if key == "rest" else key] = (
                "rest payload did not decode" if key == "rest" else "region payload did not decode"
            ) + f" ({reason})"
        has_rest = bool(coded.rest) and "rest" not in dec.errors
        with torch.inference_mode():
            out = self._synthesize(dec, w, h, grid, boxes, px, has_rest)
        extra = {k: out.pop(k) for k in ("sd_latent", "region_sd_latents") if k in out}
        extra.update(y_hat=dec.y_hat.astype(np.float32), y_received=dec.received,
                     region_latents=dec.region_latents)
        return Decoded(**out, has_rest=has_rest, errors=errors, extra=extra,
                       needs_refresh=dec.needs_refresh)

    def _synthesize(self, dec: LatentFrame, w: int, h: int, grid: tuple[int, int],
                    boxes: dict[int, tuple[int, int, int, int]],
                    px: dict[int, tuple[int, int, int, int]], has_rest: bool) -> dict[str, Any]:
        import torch

        m, dev = self.model, self.device
        g = m.global_info(m.z_hat(dec.side.z_sym).to(dev))
        y = torch.from_numpy(dec.y_hat.astype(np.float32)).to(dev)[None]
        keep = torch.from_numpy(dec.received.astype(np.float32)).to(dev)[None, None]
        full = m.synthesize(y * keep, keep, g)
        if m.config.head != "pixels":
            return self._sd_outputs(dec, full, g, w, h, grid, boxes)
        background = self._to_bgr(full[..., :h, :w])
        pixels: dict[int, np.ndarray] = {}
        for rid, lat in dec.region_latents.items():
            pixels[rid] = self._decode_region(lat, boxes[rid], px[rid], g, grid)
        x_hat = background.copy()
        if not has_rest:
            for rid in boxes:  # table order, like the classical codec
                if rid in pixels:
                    x0, y0, x1, y1 = px[rid]
                    x_hat[y0:y1, x0:x1] = pixels[rid]
        return {"x_hat": x_hat, "region_pixels": pixels, "background": background}

    def _window(self, box: tuple[int, int, int, int],
                grid: tuple[int, int]) -> tuple[int, int, int, int]:
        c = self.config.region_context
        lx0, ly0, lx1, ly1 = box
        return max(0, lx0 - c), max(0, ly0 - c), min(grid[1], lx1 + c), min(grid[0], ly1 + c)

    def _region_output(self, lat: np.ndarray, box: tuple[int, int, int, int], g: torch.Tensor,
                       grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """g_s on one region's cells (nothing else) plus M(z) around it: depends only on the
        region's payload, the side and the box. Returns the output and its window origin."""
        import torch

        wx0, wy0, wx1, wy1 = self._window(box, grid)
        lx0, ly0, lx1, ly1 = box
        y = torch.zeros((1, lat.shape[0], wy1 - wy0, wx1 - wx0), device=self.device)
        keep = torch.zeros((1, 1, wy1 - wy0, wx1 - wx0), device=self.device)
        sl = (slice(ly0 - wy0, ly1 - wy0), slice(lx0 - wx0, lx1 - wx0))
        y[0, :, sl[0], sl[1]] = torch.from_numpy(lat.astype(np.float32)).to(self.device)
        keep[0, 0, sl[0], sl[1]] = 1.0
        return self.model.synthesize(y, keep, g[..., wy0:wy1, wx0:wx1]), (wx0, wy0)

    def _decode_region(self, lat: np.ndarray, box: tuple[int, int, int, int],
                       px_box: tuple[int, int, int, int], g: torch.Tensor,
                       grid: tuple[int, int]) -> np.ndarray:
        out, (wx0, wy0) = self._region_output(lat, box, g, grid)
        x0, y0, x1, y1 = px_box
        ox, oy = wx0 * LATENT_STRIDE, wy0 * LATENT_STRIDE
        return self._to_bgr(out[..., y0 - oy:y1 - oy, x0 - ox:x1 - ox])

    def _sd_outputs(self, dec: LatentFrame, full: torch.Tensor, g: torch.Tensor, w: int,
                    h: int, grid: tuple[int, int],
                    boxes: dict[int, tuple[int, int, int, int]]) -> dict[str, Any]:
        """Head ``sd_latent``: the Stable Diffusion latent (4 x H/8 x W/8) for the diffusion
        composer, which needs the SD VAE to make pixels; x_hat is a grey placeholder."""
        s = LATENT_STRIDE // 8
        latents = {}
        for rid, lat in dec.region_latents.items():
            out, (wx0, wy0) = self._region_output(lat, boxes[rid], g, grid)
            lx0, ly0, lx1, ly1 = boxes[rid]
            latents[rid] = out[0, :, (ly0 - wy0) * s:(ly1 - wy0) * s,
                               (lx0 - wx0) * s:(lx1 - wx0) * s].cpu().numpy()
        return {"x_hat": np.full((h, w, 3), 128, np.uint8), "region_pixels": {},
                "background": None, "sd_latent": full[0, :, :-(-h // 8), :-(-w // 8)].cpu().numpy(),
                "region_sd_latents": latents}
