"""``diffusion``: compose the frame with Stable Diffusion 2.1 and a control module (seed §3.3).

The learned codec's ``sd_latent`` head rebuilds z_c, the SD VAE latent of the frame, from the
task latents that arrived and M(z); that estimate is rough outside the task regions. Here a
ControlNet (the control module, trained with ``discover/train/control.py``) takes the estimate as
its condition and steers SD 2.1-base's UNet while it denoises a latent, the task regions are put
back from the codec at each step (or once at the end), and the SD VAE decodes the result::

    decoded["sd_latent"] (4 x H/8 x W/8)  -- region_sd_latents pasted --> anchor, task mask
        |  (pixels-head checkpoint: x_hat with the region crops pasted --VAE encoder--> the same)
        v
    condition c --pad to the UNet's multiple--+
                                              |
    noise (seeded) --(strength < 1: noised c)-> z_T
        for t in DDIM / DPM-Solver timesteps (8 for machine tasks, 50 for people):
            ControlNet(z_t, t, text, c) -> residuals
            UNet(z_t, t, text, residuals) -> eps   (classifier-free guidance if scale > 1)
            z_t-1 = scheduler step
            blend each_step: z_t-1 = mask * noised(anchor, t-1) + (1 - mask) * z_t-1
        blend end: z_0 = mask * anchor + (1 - mask) * z_0
    z_0 --VAE decoder--> crop to H x W --> BGR uint8

The text prompt names the labels present (``prompt`` template). Latents follow the convention
of the UNet: the VAE latent *times* the VAE's ``scaling_factor`` (0.18215 for SD 2.1), which is
also what the codec's ``sd_latent`` head must be trained to predict (:func:`vae_latent` gives
that target). A ControlNet here conditions on that 4-channel latent directly, so its
conditioning embedding does not downsample (``conditioning_embedding_out_channels`` of length
1).

Weights come from local folders in diffusers' layout (``save_pretrained``) or the Hugging Face
cache; nothing is downloaded unless ``allow_download`` is set. Models load once per
(folder, device, dtype) and are shared by the composers of all cameras of a sink.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from discover.sdk.codecs.base import SubstreamError
from discover.sdk.codecs.learned.entropy import LATENT_STRIDE
from discover.sdk.devices import torch_device
from discover.sdk.errors import DiscoverError
from discover.sdk.hub import is_path_like, short_reason
from discover.sink.composers.base import COMPOSERS, Composer, ComposerConfig
from pydantic import Field

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_BASE = "stabilityai/stable-diffusion-2-1-base"
#: the learned codec's latent cell in pixels: region latents cover their box snapped outwards
#: to this grid
CODEC_CELL = LATENT_STRIDE
VAE_STRIDE = 8
SIDE_ERROR = SubstreamError.SIDE  # decoded["errors"] key of a side that did not decode
_COMPONENTS = {  # subfolder -> a file that must be in it
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": ("vocab.json", "tokenizer.json"),
    "scheduler": "scheduler_config.json",
}
_PROMPT_CACHE = 16


class StableDiffusionConfig(ComposerConfig):
    """Options shared by the Stable Diffusion composers (``diffusion``, ``sd-inpaint``)."""

    base: str = Field(DEFAULT_BASE, description="Stable Diffusion folder (diffusers layout: "
                      "unet/, vae/, text_encoder/, tokenizer/, scheduler/) or Hugging Face "
                      "model id, looked up in the HF cache")
    revision: str | None = Field(None, description="model revision for a Hugging Face id")
    allow_download: bool = Field(False, description="fetch missing models from the Hugging "
                                 "Face hub (off: offline, cache or local folders only)")
    scheduler: Literal["ddim", "dpm"] = Field("ddim", description="sampler: DDIM or "
                                              "DPM-Solver++ (2nd order multistep)")
    steps: int = Field(8, ge=1, le=1000, description="denoising steps: 8 for machine tasks, "
                       "50 for human viewing (seed §4.1)")
    strength: float = Field(1.0, gt=0, le=1, description="1: start from pure noise; below 1: "
                            "start from the decoded latent noised to this share of the "
                            "schedule (runs about steps x strength steps)")
    guidance_scale: float = Field(1.0, ge=0, description="classifier-free guidance; above 1 "
                                  "doubles the UNet work per step")
    prompt: str = Field("a photo of {labels}", description="text prompt; {labels} becomes the "
                        "labels present in the frame's region table, comma-separated")
    prompt_empty: str = Field("a photo", description="prompt when no region is in the frame")
    negative_prompt: str = Field("", description="the unconditional prompt of guidance")
    max_labels: int = Field(8, ge=0, description="labels named in the prompt at most (CLIP "
                            "reads 77 tokens)")
    seed: int | None = Field(0, description="noise seed, the same for every frame (stable "
                             "video, reproducible output); null: fresh noise each frame")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda if available")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="model precision; auto: float16 on CUDA, float32 on CPU")


class DiffusionConfig(StableDiffusionConfig):
    type: Literal["diffusion"] = "diffusion"
    controlnet: str | None = Field(None, description="control module folder (ControlNetModel "
                                   "save_pretrained layout, 4-channel latent condition) or HF "
                                   "id; train one with discover/train/control.py. Unset: no "
                                   "control, then strength must be below 1 (SDEdit from the "
                                   "decoded latent)")
    control_scale: float = Field(1.0, ge=0, description="weight of the ControlNet residuals")
    blend: Literal["each_step", "end", "none"] = Field(
        "each_step", description="task regions kept faithful: their decoded latent replaces "
                                 "the sample inside the regions after every step (noised to "
                                 "that step), only once at the end, or not at all")


# -- loading ------------------------------------------------------------------------------------

@dataclass(slots=True)
class StableDiffusionParts:
    """The frozen pieces of a Stable Diffusion checkpoint, on one device and dtype."""

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler_config: dict[str, Any]
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    source: str

    @property
    def latent_multiple(self) -> int:
        """Latent sizes the UNet takes are multiples of this (8 for SD: 64 px)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def vae_stride(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


_MODELS: dict[tuple[Any, ...], Any] = {}


def clear_model_cache() -> None:
    """Forget the shared models (tests; freeing GPU memory)."""
    _MODELS.clear()




def setting(section: str, name: str) -> str:
    """How error lines name a setting: ``composer.base`` for a config section, ``--base`` for
    a command line (section ``--``)."""
    return f"--{name.replace('_', '-')}" if section == "--" else f"{section}.{name}"


def import_diffusers(who: str) -> Any:
    """The diffusers module, or one error line saying what to install."""
    try:
        import diffusers
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise DiscoverError(f"{who} needs torch, diffusers and transformers ({short_reason(e)}); "
                            "install them: pip install 'discover-sdk[diffusion]'") from None
    return diffusers


def resolve_device(device: str, section: str = "sink.composer") -> torch.device:
    """``auto`` -> cuda if available, else cpu; ``cuda`` without a GPU is a user error."""
    return torch_device(device, setting(section, "device"))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA (SD 2.1 runs well in it), float32 on CPU."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def _download_hint(model: str, folder: str = "DIR") -> str:
    return (f"on a machine with internet run `huggingface-cli download {model} --local-dir "
            f"{folder}` (newer huggingface_hub: `hf download ...`), copy {folder} here")


def load_stable_diffusion(base: str, *, revision: str | None = None,
                          allow_download: bool = False, device: str = "auto",
                          dtype: str = "auto", section: str = "sink.composer",
                          default: str = DEFAULT_BASE) -> StableDiffusionParts:
    """UNet, VAE, text encoder, tokenizer and scheduler config of a Stable Diffusion folder or
    cached hub id, frozen and in eval mode; any failure is one DiscoverError line naming the
    folder (or file) and how to get it. Cached: a second call with the same arguments returns
    the same objects."""
    diffusers = import_diffusers(f"{setting(section, 'base')} (Stable Diffusion)")
    base_key = setting(section, "base")
    from transformers import CLIPTextModel, CLIPTokenizer

    dev = resolve_device(device, section)
    dt = resolve_dtype(dtype, dev)
    key = ("sd", base, revision, allow_download, str(dev), str(dt))
    if key in _MODELS:
        return _MODELS[key]
    folder = Path(base).expanduser()
    local = folder.is_dir()
    hub_name = default if is_path_like(base) else base
    if not local and is_path_like(base):
        raise DiscoverError(f"Stable Diffusion folder {base} does not exist ({base_key}); "
                            f"{_download_hint(hub_name, base)} and set {base_key} to it")
    if local:
        for sub, files in _COMPONENTS.items():
            names = (files,) if isinstance(files, str) else files
            if not any((folder / sub / n).is_file() for n in names):
                raise DiscoverError(
                    f"Stable Diffusion folder {folder} has no {sub}/{names[0]}; it must hold "
                    "unet/, vae/, text_encoder/, tokenizer/ and scheduler/ as diffusers' "
                    f"save_pretrained writes them; {_download_hint(hub_name, str(folder))}")
    source = str(folder) if local else base
    kw: dict[str, Any] = {"local_files_only": local or not allow_download}
    if not local and revision:
        kw["revision"] = revision
    try:
        with warnings.catch_warnings():
            # diffusers passes huggingface_hub an argument it deprecated; nothing to act on
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            unet = diffusers.UNet2DConditionModel.from_pretrained(source, subfolder="unet",
                                                                  torch_dtype=dt, **kw)
            vae = diffusers.AutoencoderKL.from_pretrained(source, subfolder="vae",
                                                          torch_dtype=dt, **kw)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
            sched_cfg = dict(diffusers.DDIMScheduler.load_config(source, subfolder="scheduler",
                                                                 **kw))
    except DiscoverError:
        raise
    except Exception as e:  # diffusers/transformers/hub raise OSError, ValueError, HF errors
        why = short_reason(e)
        if local:
            msg = (f"cannot load Stable Diffusion from folder {source} ({why}); it must hold "
                   "unet/, vae/, text_encoder/, tokenizer/ and scheduler/ with their weights "
                   f"as diffusers' save_pretrained writes them; {_download_hint(hub_name, source)}")
        elif kw["local_files_only"]:
            why = "" if isinstance(e, OSError) else f" ({why})"
            msg = (f"Stable Diffusion model '{base}' is neither a folder here nor in the Hugging "
                   f"Face cache, and downloads are off{why}; {_download_hint(base)} and set "
                   f"{base_key} to DIR, or allow downloads ({setting(section, 'allow_download')}"
                   f"{'' if section == '--' else ': true'})")
        else:
            msg = (f"cannot download Stable Diffusion model '{base}' ({why}); check the model id "
                   f"and the network, or set {base_key} to a local folder")
        raise DiscoverError(msg) from None
    text_encoder.to(dtype=dt)  # diffusers models loaded in dt already
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
        m.to(dev).eval()
    parts = StableDiffusionParts(unet, vae, text_encoder, tokenizer, sched_cfg, dev, dt, source)
    lat = vae.config.latent_channels
    if parts.vae_stride != VAE_STRIDE or unet.config.out_channels != lat \
            or unet.config.in_channels not in (lat, 2 * lat + 1):  # text-to-image or inpainting
        raise DiscoverError(f"Stable Diffusion folder {source}: the VAE (stride "
                            f"{parts.vae_stride}, {vae.config.latent_channels} latent channels) "
                            f"does not fit the UNet ({unet.config.in_channels} input channels); "
                            "use one checkpoint's unet/ and vae/")
    log.info("stable diffusion: loaded %s on %s (%s)", source, dev, dt)
    _MODELS[key] = parts
    return parts


def load_controlnet(path: str, parts: StableDiffusionParts, *, revision: str | None = None,
                    allow_download: bool = False, section: str = "sink.composer",
                    name: str = "controlnet") -> Any:
    """The control module: a ControlNetModel conditioned on the 4-channel SD latent (no
    downsampling embedding) and matching ``parts.unet``; one DiscoverError line otherwise."""
    key_name = setting(section, name)
    diffusers = import_diffusers(f"{key_name} (ControlNet)")
    key = ("controlnet", path, revision, allow_download, str(parts.device), str(parts.dtype),
           parts.source)
    if key in _MODELS:
        return _MODELS[key]
    folder = Path(path).expanduser()
    local = folder.is_dir()
    train = ("train one with `discover train control --base SD_FOLDER --codec "
             f"CODEC_CHECKPOINT --out {path}`")
    if not local and is_path_like(path):
        raise DiscoverError(f"ControlNet folder {path} does not exist ({key_name}); {train}")
    if local and not (folder / "config.json").is_file():
        raise DiscoverError(f"ControlNet folder {folder} has no config.json ({key_name}); "
                            f"it must be what ControlNetModel.save_pretrained writes; {train}")
    kw: dict[str, Any] = {"local_files_only": local or not allow_download}
    if not local and revision:
        kw["revision"] = revision
    try:
        net = diffusers.ControlNetModel.from_pretrained(str(folder) if local else path,
                                                        torch_dtype=parts.dtype, **kw)
    except Exception as e:  # noqa: BLE001 - hub/diffusers errors become one line
        where = f"folder {folder}" if local else f"'{path}' (not in the Hugging Face cache?)"
        raise DiscoverError(f"cannot load the ControlNet from {where} ({short_reason(e)}); {train}") \
            from None
    cfg, ucfg = net.config, parts.unet.config
    if cfg.conditioning_channels != ucfg.out_channels \
            or len(cfg.conditioning_embedding_out_channels) != 1:
        raise DiscoverError(
            f"ControlNet {path} takes {cfg.conditioning_channels}-channel conditions downsampled "
            f"{2 ** (len(cfg.conditioning_embedding_out_channels) - 1)}x; the diffusion composer "
            f"conditions on the {ucfg.out_channels}-channel SD latent itself "
            "(conditioning_channels=4, one conditioning_embedding_out_channels entry); " + train)
    if tuple(cfg.block_out_channels) != tuple(ucfg.block_out_channels) \
            or cfg.cross_attention_dim != ucfg.cross_attention_dim:
        raise DiscoverError(f"ControlNet {path} was built for another UNet (blocks "
                            f"{tuple(cfg.block_out_channels)}, not those of {parts.source}); "
                            f"{train} on this base")
    net.requires_grad_(False)
    net.to(parts.device).eval()
    _MODELS[key] = net
    return net


# -- latents and pixels ---------------------------------------------------------------------------

def vae_latent(vae: Any, rgb: torch.Tensor) -> torch.Tensor:
    """RGB batch in [0, 1] (B x 3 x H x W, H and W multiples of 8) -> the latent the UNet
    denoises: the VAE posterior mean times ``scaling_factor`` (minus ``shift_factor`` where a
    VAE has one). The codec's ``sd_latent`` head is trained towards this (``latent_target``)."""
    x = rgb.to(device=vae.device, dtype=vae.dtype) * 2 - 1
    z = vae.encode(x).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


def vae_pixels(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`vae_latent`: latent -> RGB in [0, 1]."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latent.to(dtype=vae.dtype) / vae.config.scaling_factor + shift
    return (vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)


def bgr_to_tensor(frame: np.ndarray, multiple: int, device: Any) -> torch.Tensor:
    """BGR uint8 H x W x 3 -> RGB 1 x 3 x H' x W' in [0, 1], edge-padded to multiples."""
    import torch

    h, w = frame.shape[:2]
    ph, pw = -(-h // multiple) * multiple - h, -(-w // multiple) * multiple - w
    rgb = np.ascontiguousarray(frame[:, :, ::-1])
    if ph or pw:
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float() / 255.0


def tensor_to_bgr(rgb: torch.Tensor, height: int, width: int) -> np.ndarray:
    """RGB 1 x 3 x H' x W' in [0, 1] -> BGR uint8, cropped to height x width."""
    x = (rgb[0, :, :height, :width].float() * 255.0).round().clamp(0, 255).byte()
    return np.ascontiguousarray(x.permute(1, 2, 0).cpu().numpy()[:, :, ::-1])


def pad_latent(x: torch.Tensor, multiple: int, mode: str = "replicate") -> torch.Tensor:
    """Pad a 1 x C x h x w latent on the right and bottom to multiples of ``multiple``."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = -(-h // multiple) * multiple - h, -(-w // multiple) * multiple - w
    if not (ph or pw):
        return x
    if mode == "constant":
        return F.pad(x, (0, pw, 0, ph))
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def box_cells(box: Sequence[int], stride: int) -> tuple[int, int, int, int]:
    """Latent cells (x0, y0, x1, y1) a pixel box touches at ``stride`` pixels per cell."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return x0 // stride, y0 // stride, -(-x1 // stride), -(-y1 // stride)


def prompt_for(template: str, empty: str, labels: Sequence[str], max_labels: int) -> str:
    """The prompt naming the distinct labels present (first ``max_labels``, in table order)."""
    seen: list[str] = []
    for label in labels:
        label = " ".join(str(label).split())
        if label and label not in seen:
            seen.append(label)
    if not seen or max_labels == 0:
        return empty
    return template.replace("{labels}", ", ".join(seen[:max_labels]))


def frame_size(decoded: dict[str, Any], info: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of the frame: the decoded frame's shape, else the stream's size."""
    x = decoded.get("x_hat")
    if isinstance(x, np.ndarray) and x.ndim == 3:
        return int(x.shape[0]), int(x.shape[1])
    meta = info.get("meta")
    if meta is not None:
        return int(meta.height), int(meta.width)
    raise DiscoverError("the decoded frame has no x_hat and the frame info no stream meta; "
                        "a composer needs the frame size")


def codec_latents(decoded: dict[str, Any], boxes: dict[int, Sequence[int]], device: Any,
                  dtype: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """From the codec's ``sd_latent`` head: (condition, anchor, task mask, region ids placed).

    ``condition`` is g_s's latent over everything that arrived; ``anchor`` is the condition with
    each task region's own latent (the same whatever else came) put in at its box, snapped to
    the codec's 16 px cells as the codec decoded it; ``mask`` is 1 on those latent cells."""
    import torch

    cond = torch.from_numpy(np.asarray(decoded["sd_latent"], np.float32))[None].to(device, dtype)
    anchor, mask = cond.clone(), torch.zeros_like(cond[:, :1])
    lh, lw = cond.shape[-2:]
    per_cell = CODEC_CELL // VAE_STRIDE
    placed = []
    for rid, lat in (decoded.get("region_sd_latents") or {}).items():
        if rid not in boxes:
            continue
        x0, y0 = (int(v) // CODEC_CELL * per_cell for v in boxes[rid][:2])
        lat_t = torch.from_numpy(np.asarray(lat, np.float32)).to(device, dtype)
        y1, x1 = min(lh, y0 + lat_t.shape[-2]), min(lw, x0 + lat_t.shape[-1])
        if y1 > y0 and x1 > x0:
            anchor[0, :, y0:y1, x0:x1] = lat_t[:, :y1 - y0, :x1 - x0]
            mask[0, :, y0:y1, x0:x1] = 1.0
            placed.append(rid)
    return cond, anchor, mask, placed


# -- the shared sampler -------------------------------------------------------------------------

class StableDiffusionComposer(Composer):
    """Base of the SD composers: loading, prompts, noise, timesteps and the denoising loop."""

    Config: ClassVar[type[StableDiffusionConfig]]
    config: StableDiffusionConfig
    #: what the error lines call this composer's config section
    section: ClassVar[str] = "sink.composer"
    default_base: ClassVar[str] = DEFAULT_BASE

    def __init__(self, config: StableDiffusionConfig) -> None:
        super().__init__(config)
        #: the last denoising loop: seconds, steps run, whether the latents stayed finite
        self.last_sample: dict[str, Any] = {}
        self.parts = load_stable_diffusion(
            config.base, revision=config.revision, allow_download=config.allow_download,
            device=config.device, dtype=config.dtype, section=self.section,
            default=self.default_base)
        self._prompts: OrderedDict[str, torch.Tensor] = OrderedDict()

    # -- pieces used by compose ----------------------------------------------------------------

    def scheduler(self) -> Any:
        """A fresh scheduler (they keep per-run state) from the checkpoint's schedule."""
        import diffusers

        cfg = dict(self.parts.scheduler_config)
        cfg.pop("_class_name", None)
        if self.config.scheduler == "dpm":
            return diffusers.DPMSolverMultistepScheduler.from_config(
                cfg, algorithm_type="dpmsolver++", solver_order=2)
        return diffusers.DDIMScheduler.from_config(cfg)

    def text_embedding(self, text: str) -> torch.Tensor:
        """CLIP text states (1 x 77 x D) of ``text``, cached per string."""
        hit = self._prompts.get(text)
        if hit is not None:
            self._prompts.move_to_end(text)
            return hit
        import torch

        tok = self.parts.tokenizer
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.parts.device)
        with torch.inference_mode():
            emb = self.parts.text_encoder(ids)[0].to(self.parts.dtype)
        self._prompts[text] = emb
        while len(self._prompts) > _PROMPT_CACHE:
            self._prompts.popitem(last=False)
        return emb

    def prompt_states(self, info: dict[str, Any]) -> tuple[str, torch.Tensor]:
        """The frame's prompt and the UNet's text input (unconditional first under guidance)."""
        import torch

        c = self.config
        labels = [r.label for r in info.get("regions") or []]
        text = prompt_for(c.prompt, c.prompt_empty, labels, c.max_labels)
        emb = self.text_embedding(text)
        if self.guided:
            emb = torch.cat([self.text_embedding(c.negative_prompt), emb])
        return text, emb

    @property
    def guided(self) -> bool:
        return self.config.guidance_scale > 1.0

    def noise(self, shape: Sequence[int]) -> torch.Tensor:
        """Gaussian noise from ``seed`` (drawn on the CPU, so any device gives the same)."""
        import torch

        gen = torch.Generator(device="cpu")
        if self.config.seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(self.config.seed))
        return torch.randn(tuple(shape), generator=gen).to(self.parts.device, self.parts.dtype)

    @staticmethod
    def noised(sched: Any, x0: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
        """x0 diffused to timestep ``t`` of the training schedule (variance preserving), the
        same for DDIM and DPM-Solver whatever their internal step state."""
        ab = sched.alphas_cumprod[int(t)].to(dtype=x0.dtype, device=x0.device)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def sample(self, start: torch.Tensor, noise: torch.Tensor,
               eps_fn: Callable[[torch.Tensor, Any], torch.Tensor],
               after_step: Callable[[Any, torch.Tensor, Any], torch.Tensor] | None = None,
               ) -> torch.Tensor:
        """Denoise: ``start`` is the clean latent that ``strength`` < 1 starts from (ignored at
        strength 1), ``noise`` the seeded noise (:meth:`noise`); ``eps_fn(model input, t)``
        is the UNet's prediction (noise or velocity, as the scheduler expects; batched under
        guidance); ``after_step(scheduler, latents, next t or
        None)`` may edit each step's result."""
        import torch

        c = self.config
        sched = self.scheduler()
        sched.set_timesteps(c.steps, device=self.parts.device)
        timesteps = sched.timesteps
        order = getattr(sched, "order", 1)
        run = max(1, min(c.steps, round(c.steps * c.strength)))
        first = (c.steps - run) * order
        timesteps = timesteps[first:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(first)
        if c.strength >= 1.0:
            latents = noise * sched.init_noise_sigma
        else:
            latents = self.noised(sched, start, noise, timesteps[0])
        g = c.guidance_scale
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i, t in enumerate(timesteps):
                inp = torch.cat([latents] * 2) if self.guided else latents
                inp = sched.scale_model_input(inp, t)
                eps = eps_fn(inp, t)
                if self.guided:
                    uncond, cond = eps.chunk(2)
                    eps = uncond + g * (cond - uncond)
                latents = sched.step(eps, t, latents, return_dict=False)[0]
                if after_step is not None:
                    nxt = timesteps[i + 1] if i + 1 < len(timesteps) else None
                    latents = after_step(sched, latents, nxt)
            if self.parts.device.type == "cuda":
                torch.cuda.synchronize()
            self.last_sample = {"seconds": time.perf_counter() - t0, "steps": len(timesteps),
                                "finite": bool(torch.isfinite(latents).all())}
        return latents

    def decode(self, latent: torch.Tensor, height: int, width: int) -> np.ndarray:
        """SD latent -> BGR uint8 frame of height x width."""
        import torch

        with torch.inference_mode():
            return tensor_to_bgr(vae_pixels(self.parts.vae, latent), height, width)

    def encode(self, frame: np.ndarray) -> torch.Tensor:
        """BGR uint8 frame -> SD latent (1 x 4 x ceil(H/8) x ceil(W/8))."""
        import torch

        with torch.inference_mode():
            x = bgr_to_tensor(frame, VAE_STRIDE, self.parts.device)
            return vae_latent(self.parts.vae, x)


# -- the composer ---------------------------------------------------------------------------------

@COMPOSERS.register
class DiffusionComposer(StableDiffusionComposer):
    """Task regions from the codec, everything else composed by SD 2.1 + the control module.

    Input is the learned codec's ``sd_latent`` head output (``sd_latent`` and
    ``region_sd_latents``). With a pixels-head checkpoint there is no SD latent: the decoded
    frame (``x_hat`` with the region crops pasted) is VAE-encoded to make the condition, and with
    blending on, the decoded region crops are pasted over the result at the end.
    """

    key = "diffusion"
    Config = DiffusionConfig
    config: DiffusionConfig

    def __init__(self, config: DiffusionConfig) -> None:
        if not config.controlnet and config.strength >= 1.0:  # checked before loading SD
            raise DiscoverError("composer 'diffusion' without sink.composer.controlnet has "
                                "nothing to keep the frame: set sink.composer.controlnet to a "
                                "control module (discover/train/control.py), or "
                                "sink.composer.strength below 1 to refine the decoded latent, "
                                "or use composer 'sd-inpaint'")
        super().__init__(config)
        ucfg = self.parts.unet.config
        if ucfg.in_channels != ucfg.out_channels:
            raise DiscoverError(f"Stable Diffusion {self.parts.source} has an inpainting UNet "
                                f"({ucfg.in_channels} input channels); the diffusion composer "
                                "needs SD 2.1-base: set sink.composer.base to it, or use "
                                "composer 'sd-inpaint' with this model")
        self.controlnet = None
        if config.controlnet:
            self.controlnet = load_controlnet(config.controlnet, self.parts,
                                              revision=config.revision,
                                              allow_download=config.allow_download,
                                              section=self.section)

    def condition(self, decoded: dict[str, Any], info: dict[str, Any], height: int,
                  width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                       dict[int, np.ndarray]]:
        """(condition, anchor, task mask, region crops to paste), latents 1 x 4 x h/8 x w/8.

        ``condition`` is what the codec rebuilt from everything that arrived; ``anchor`` is the
        condition with each task region's own latent (independent of what else came) put in;
        ``mask`` is 1 on the latent cells of those regions."""
        import torch

        boxes = {r.rid: r.box for r in info.get("regions") or []}
        if decoded.get("sd_latent") is not None:
            cond, anchor, mask, _ = codec_latents(decoded, boxes, self.parts.device,
                                                  self.parts.dtype)
            return cond, anchor, mask, {}
        crops = {rid: c for rid, c in (decoded.get("region_pixels") or {}).items()
                 if rid in boxes}
        frame = np.array(decoded["x_hat"], dtype=np.uint8, copy=True)
        for rid, crop in crops.items():
            x0, y0, x1, y1 = boxes[rid]
            frame[y0:y1, x0:x1] = crop
        cond = self.encode(frame)
        mask = torch.zeros_like(cond[:, :1])
        for rid in crops:
            x0, y0, x1, y1 = box_cells(boxes[rid], VAE_STRIDE)
            mask[..., y0:y1, x0:x1] = 1.0
        return cond, cond, mask, crops

    def compose(self, decoded: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        import torch

        if decoded.get("sd_latent") is None and SIDE_ERROR in (decoded.get("errors") or {}):
            return decoded["x_hat"]  # nothing decoded: the codec's grey placeholder
        c = self.config
        height, width = frame_size(decoded, info)
        cond, anchor, mask, crops = self.condition(decoded, info, height, width)
        m = self.parts.latent_multiple
        cond, anchor = pad_latent(cond, m), pad_latent(anchor, m)
        mask = pad_latent(mask, m, mode="constant")
        _, emb = self.prompt_states(info)
        control = torch.cat([cond] * 2) if self.guided else cond
        unet, net = self.parts.unet, self.controlnet

        def eps_fn(inp: torch.Tensor, t: Any) -> torch.Tensor:
            kw: dict[str, Any] = {}
            if net is not None:
                down, mid = net(inp, t, encoder_hidden_states=emb, controlnet_cond=control,
                                conditioning_scale=c.control_scale, return_dict=False)
                kw = {"down_block_additional_residuals": down,
                      "mid_block_additional_residual": mid}
            return unet(inp, t, encoder_hidden_states=emb, return_dict=False, **kw)[0]

        def put_back(sched: Any, latents: torch.Tensor, nxt: Any) -> torch.Tensor:
            ref = anchor if nxt is None else self.noised(sched, anchor, noise, nxt)
            return mask * ref + (1 - mask) * latents

        noise = self.noise(cond.shape)
        latents = self.sample(cond, noise, eps_fn,
                              put_back if c.blend == "each_step" else None)
        if c.blend == "end":
            latents = mask * anchor + (1 - mask) * latents
        out = self.decode(latents, height, width)
        if c.blend != "none" and crops:
            boxes = {r.rid: r.box for r in info.get("regions") or []}
            for rid, crop in crops.items():
                x0, y0, x1, y1 = boxes[rid]
                out[y0:y1, x0:x1] = crop
        return out
