"""Loading Stable Diffusion and its control module for the SD composers, once per process.

Weights come from local folders in diffusers' layout (``save_pretrained``) or the Hugging Face
cache; nothing is downloaded unless ``allow_download`` is set. Models load once per
(folder, device, dtype) and are shared by the composers of all cameras of a sink, and by
control-module training (discover/train/control.py). Every failure is one DiscoverError line
naming the folder or model and how to get it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from discover.sdk.devices import torch_device
from discover.sdk.errors import DiscoverError
from discover.sdk.hub import is_path_like, short_reason
from discover.sink.composers.sd_tensors import VAE_STRIDE

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_BASE = "stabilityai/stable-diffusion-2-1-base"
_COMPONENTS = {  # subfolder -> a file that must be in it
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": ("vocab.json", "tokenizer.json"),
    "scheduler": "scheduler_config.json",
}


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


def _check_sd_folder(base: str, base_key: str, hub_name: str) -> bool:
    """Whether ``base`` is a local folder; one error line for a path that is not there or a
    folder that lacks one of the parts."""
    folder = Path(base).expanduser()
    if not folder.is_dir():
        if is_path_like(base):
            raise DiscoverError(f"Stable Diffusion folder {base} does not exist ({base_key}); "
                                f"{_download_hint(hub_name, base)} and set {base_key} to it")
        return False
    for sub, files in _COMPONENTS.items():
        names = (files,) if isinstance(files, str) else files
        if not any((folder / sub / n).is_file() for n in names):
            raise DiscoverError(
                f"Stable Diffusion folder {folder} has no {sub}/{names[0]}; it must hold "
                "unet/, vae/, text_encoder/, tokenizer/ and scheduler/ as diffusers' "
                f"save_pretrained writes them; {_download_hint(hub_name, str(folder))}")
    return True


def _sd_load_error(e: Exception, base: str, source: str, local: bool, offline: bool,
                   section: str, hub_name: str) -> DiscoverError:
    """The one line a failed load becomes: what was tried and how to get the model."""
    base_key = setting(section, "base")
    why = short_reason(e)
    if local:
        return DiscoverError(
            f"cannot load Stable Diffusion from folder {source} ({why}); it must hold "
            "unet/, vae/, text_encoder/, tokenizer/ and scheduler/ with their weights "
            f"as diffusers' save_pretrained writes them; {_download_hint(hub_name, source)}")
    if offline:
        why = "" if isinstance(e, OSError) else f" ({why})"
        return DiscoverError(
            f"Stable Diffusion model '{base}' is neither a folder here nor in the Hugging "
            f"Face cache, and downloads are off{why}; {_download_hint(base)} and set "
            f"{base_key} to DIR, or allow downloads ({setting(section, 'allow_download')}"
            f"{'' if section == '--' else ': true'})")
    return DiscoverError(f"cannot download Stable Diffusion model '{base}' ({why}); check the "
                         f"model id and the network, or set {base_key} to a local folder")


def _sd_modules(diffusers: Any, source: str, dt: Any, kw: dict[str, Any]) -> tuple[Any, ...]:
    """(unet, vae, text encoder, tokenizer, scheduler config) as from_pretrained loads them."""
    from transformers import CLIPTextModel, CLIPTokenizer

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
    return unet, vae, text_encoder, tokenizer, sched_cfg


def load_stable_diffusion(base: str, *, revision: str | None = None,
                          allow_download: bool = False, device: str = "auto",
                          dtype: str = "auto", section: str = "sink.composer",
                          default: str = DEFAULT_BASE) -> StableDiffusionParts:
    """UNet, VAE, text encoder, tokenizer and scheduler config of a Stable Diffusion folder or
    cached hub id, frozen and in eval mode; any failure is one DiscoverError line naming the
    folder (or file) and how to get it. Cached: a second call with the same arguments returns
    the same objects."""
    diffusers = import_diffusers(f"{setting(section, 'base')} (Stable Diffusion)")
    dev = resolve_device(device, section)
    dt = resolve_dtype(dtype, dev)
    key = ("sd", base, revision, allow_download, str(dev), str(dt))
    if key in _MODELS:
        return _MODELS[key]
    hub_name = default if is_path_like(base) else base
    local = _check_sd_folder(base, setting(section, "base"), hub_name)
    source = str(Path(base).expanduser()) if local else base
    kw: dict[str, Any] = {"local_files_only": local or not allow_download}
    if not local and revision:
        kw["revision"] = revision
    try:
        unet, vae, text_encoder, tokenizer, sched_cfg = _sd_modules(diffusers, source, dt, kw)
    except DiscoverError:
        raise
    except Exception as e:  # diffusers/transformers/hub raise OSError, ValueError, HF errors
        raise _sd_load_error(e, base, source, local, kw["local_files_only"], section,
                             hub_name) from None
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
