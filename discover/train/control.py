"""Train the control module of the ``diffusion`` composer (seed §3.3, trained as in §3.4).

A ControlNet learns to steer Stable Diffusion 2.1-base's UNet with the learned codec's decoded SD
latent (its ``sd_latent`` head), so that denoising rebuilds the frame the codec only partly sent.
Everything else is frozen: UNet, VAE, text encoder and the codec::

    frames 0-499 of vtest.avi (+ scikit-image photos, + --images folders)
        --random scale, crop, flip (the codec trainer's loader)--> x  (B x 3 x crop x crop)
    target     z_c = SD VAE latent of x (posterior mean x scaling_factor, sink.composers.sd_tensors)
    condition  c   = codec g_s(y_hat * keep, keep, M(z)) with 0..mask_max of the y cells zeroed
                     (random rectangles, as stage II of the codec: regions that did not arrive)
    t ~ U{0..T-1}, eps ~ N(0, I), z_t = sqrt(abar_t) z_c + sqrt(1 - abar_t) eps
    loss = || target - UNet(z_t, t, text, residuals = ControlNet(z_t, t, text, c)) ||^2
           (target eps, or the velocity for v-prediction checkpoints)

The ControlNet starts as a copy of the UNet's encoder with zero convolutions (``from_unet``), its
condition embedding takes the 4-channel latent at 1/8 scale and does not downsample. It is saved
with ``save_pretrained`` into --out, with ``training.json`` (data and held-out split, steps,
seconds, device, final loss). vtest.avi frames 500 on are the evaluation split and are never
read, whatever --last says.

    discover train control --base ~/models/sd21-base --codec CKPT --out ~/models/control
    discover train control --base DIR --codec CKPT --out DIR --steps 200 --crop 256 \\
        --device cpu                       # a smoke run on a CPU

Progress lines go to stderr; ``--json`` prints a one-line summary on stdout at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "discover-control/1"
RECORD_NAME = "training.json"
Log = Callable[[str], None]


@dataclass
class ControlTrainConfig:
    """What :func:`train_control` trains (defaults: SD 2.1-base at its native 512 px)."""

    base: str
    codec: Path
    out: Path
    init: Path | None = None  # continue from this ControlNet folder
    steps: int = 10000
    batch: int = 4
    crop: int = 512
    lr: float = 1e-5
    mask_max: float = 0.5
    prompt: str = ""  # crops carry no labels; the condition carries the content
    embedding_channels: int = 256  # width of the condition embedding (one conv, no downsampling)
    save_every: int = 1000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # frozen parts; auto: bfloat16 autocast on CUDA, float32 on CPU
    threads: int | None = None
    revision: str | None = None
    allow_download: bool = False
    gradient_checkpointing: bool = False
    videos: list[Any] = field(default_factory=list)  # training.VideoSource
    images: list[Path] = field(default_factory=list)
    use_skimage: bool = True
    opencv_photos: bool = False  # OpenCV's TRAIN_PHOTOS, as for the codec


def load_codec(folder: Path, device: Any) -> tuple[Any, str]:
    """The frozen codec (``sd_latent`` head) and its content hash."""
    from discover.sdk.codecs.learned.checkpoint import load_pretrained
    from discover.sdk.errors import DiscoverError

    ck = load_pretrained(folder, device=str(device))
    if ck.model.config.head != "sd_latent":
        raise DiscoverError(f"codec checkpoint {folder} has the '{ck.model.config.head}' head; "
                            "the control module conditions on the SD latent the 'sd_latent' "
                            "head decodes: pass a checkpoint trained with head sd_latent")
    ck.model.requires_grad_(False)
    return ck.model.to(device).eval(), ck.hash


def new_controlnet(unet: Any, embedding_channels: int) -> Any:
    """A ControlNet copied from the UNet's encoder, conditioned on the 4-channel SD latent."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_channels=unet.config.out_channels,
                                     conditioning_embedding_out_channels=(embedding_channels,))


class ControlTrainer:
    """One optimisation step at a time: the frozen parts make targets and conditions, only the
    ControlNet learns. ``loss`` takes explicit noise and timesteps so a fixed batch gives a
    comparable number before and after training."""

    def __init__(self, parts: Any, controlnet: Any, codec: Any, *, lr: float,
                 mask_max: float = 0.5, prompt: str = "", seed: int = 0) -> None:
        import torch
        from diffusers import DDPMScheduler

        self.parts, self.codec, self.mask_max = parts, codec, mask_max
        self.device = parts.device
        self.net = controlnet.to(self.device).train()
        if any(p.dtype != torch.float32 for p in self.net.parameters()):
            self.net.float()  # the learned weights stay float32 (autocast computes in low precision)
        self.net.requires_grad_(True)
        cfg = dict(parts.scheduler_config)
        cfg.pop("_class_name", None)
        self.schedule = DDPMScheduler.from_config(cfg)
        self.prediction = self.schedule.config.prediction_type
        tok = parts.tokenizer
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.device)
        with torch.no_grad():
            self.text = parts.text_encoder(ids)[0].float()
        self.opt = torch.optim.AdamW([p for p in self.net.parameters() if p.requires_grad],
                                     lr=lr, weight_decay=1e-2)
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.autocast = self.device.type == "cuda" and parts.dtype != torch.float32

    def _ctx(self) -> Any:
        import contextlib

        import torch

        if self.autocast:
            return torch.autocast(device_type="cuda", dtype=self.parts.dtype)
        return contextlib.nullcontext()

    def target(self, x: Any) -> Any:
        """z_c: the SD latent of RGB batch ``x`` in [0, 1]."""
        import torch

        from discover.sink.composers.sd_tensors import vae_latent

        with torch.no_grad(), self._ctx():
            return vae_latent(self.parts.vae, x).float()

    def condition(self, x: Any, mask_max: float | None = None) -> Any:
        """The codec's decoded SD latent of ``x`` with random 0..mask_max of its cells missing
        and a random rate point per sample."""
        import torch

        from discover.sdk.codecs.learned.entropy import LATENT_STRIDE
        from discover.sdk.codecs.learned.training import random_keep

        b = x.shape[0]
        mm = self.mask_max if mask_max is None else mask_max
        grid = (x.shape[2] // LATENT_STRIDE, x.shape[3] // LATENT_STRIDE)
        keep = random_keep(b, grid, mm, self.rng).to(self.device)
        rate = torch.from_numpy(self.rng.integers(self.codec.config.rate_points, size=b))
        with torch.no_grad():
            return self.codec(x.float(), keep, rate.to(self.device))["x_hat"].float()

    def draw(self, z0: Any) -> tuple[Any, Any]:
        """Noise and training timesteps for a batch of latents (seeded)."""
        import torch

        noise = torch.randn(z0.shape, generator=self.gen).to(self.device)
        t = torch.randint(0, self.schedule.config.num_train_timesteps, (z0.shape[0],),
                          generator=self.gen).to(self.device)
        return noise, t

    def loss(self, cond: Any, z0: Any, noise: Any, t: Any) -> Any:
        """Noise-prediction MSE of the frozen UNet steered by the ControlNet."""
        import torch.nn.functional as F

        z_t = self.schedule.add_noise(z0, noise, t)
        want = noise if self.prediction == "epsilon" else self.schedule.get_velocity(z0, noise, t)
        text = self.text.expand(z0.shape[0], -1, -1)
        with self._ctx():
            down, mid = self.net(z_t, t, encoder_hidden_states=text, controlnet_cond=cond,
                                 return_dict=False)
            pred = self.parts.unet(z_t.to(self.parts.dtype) if not self.autocast else z_t, t,
                                   encoder_hidden_states=text,
                                   down_block_additional_residuals=down,
                                   mid_block_additional_residual=mid, return_dict=False)[0]
        return F.mse_loss(pred.float(), want.float())

    def update(self, loss: Any) -> float:
        """One optimiser step on ``loss`` (gradients clipped to norm 1); returns its value."""
        import torch

        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        return float(loss.item())

    def step(self, x: Any) -> float:
        """One update on RGB batch ``x`` (fresh masks, noise and timesteps); returns the loss."""
        x = x.to(self.device)
        z0, cond = self.target(x), self.condition(x)
        noise, t = self.draw(z0)
        return self.update(self.loss(cond, z0, noise, t))


def _save(trainer: ControlTrainer, out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    trainer.net.save_pretrained(out)
    (out / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n")


def train_control(cfg: ControlTrainConfig, log: Log = print,
                  images: Sequence[np.ndarray] | None = None,
                  data_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or continue) the control module; returns the summary that the record holds."""
    import diffusers
    import torch

    from discover.sdk.codecs.learned.training import (
        HELD_OUT,
        CropSampler,
        TrainConfig,
        load_training_images,
    )
    from discover.sdk.errors import DiscoverError
    from discover.sink.composers.sd_loading import load_controlnet, load_stable_diffusion

    if cfg.crop % 64 or cfg.crop <= 0:
        raise DiscoverError(f"--crop must be a positive multiple of 64 (got {cfg.crop})")
    if not 0.0 <= cfg.mask_max <= 1.0:
        raise DiscoverError(f"--mask-max must be in [0, 1] (got {cfg.mask_max})")
    if cfg.steps < 1 or cfg.batch < 1:
        raise DiscoverError("--steps and --batch must be at least 1")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if cfg.device != "cpu" and torch.cuda.is_available() else "float32"
    parts = load_stable_diffusion(cfg.base, revision=cfg.revision,
                                  allow_download=cfg.allow_download, device=cfg.device,
                                  dtype=dtype, section="--")
    if parts.device.type == "cpu" and parts.dtype != torch.float32:
        raise DiscoverError(f"--dtype {dtype} trains only on CUDA; use --dtype float32 on a CPU")
    if parts.unet.config.in_channels != parts.unet.config.out_channels:
        raise DiscoverError(f"--base {cfg.base} is an inpainting model; the control module "
                            "steers SD 2.1-base (a text-to-image UNet)")
    if cfg.crop // 8 % parts.latent_multiple:
        raise DiscoverError(f"--crop {cfg.crop}: the UNet needs a multiple of "
                            f"{8 * parts.latent_multiple} px")
    codec, codec_hash = load_codec(Path(cfg.codec), parts.device)
    if cfg.init is not None:
        net = load_controlnet(str(cfg.init), parts, section="--", name="init")
    else:
        torch.manual_seed(cfg.seed)
        net = new_controlnet(parts.unet, cfg.embedding_channels)
    if cfg.gradient_checkpointing:
        net.enable_gradient_checkpointing()
    if images is None:
        tc = TrainConfig(crop=cfg.crop, videos=list(cfg.videos), images=list(cfg.images),
                         use_skimage=cfg.use_skimage, opencv_photos=cfg.opencv_photos)
        images, data_record = load_training_images(tc, log)
    data_record = data_record or {"sources": ["in-memory images"], "held_out": HELD_OUT}
    sampler = CropSampler(images, cfg.crop, cfg.seed)
    trainer = ControlTrainer(parts, net, codec, lr=cfg.lr, mask_max=cfg.mask_max,
                             prompt=cfg.prompt, seed=cfg.seed)
    dev = parts.device
    log(f"control module: {sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters "
        f"on {dev}; base {parts.source}; codec {cfg.codec} ({codec_hash})")
    history: list[float] = []
    t0 = time.monotonic()

    def record(step: int) -> dict[str, Any]:
        tail = history[-min(len(history), max(cfg.log_every, 1)):]
        return {
            "format": FORMAT, "what": "ControlNet for the diffusion composer (seed §3.3)",
            "base": parts.source, "codec": {"path": str(cfg.codec), "hash": codec_hash},
            "init": str(cfg.init) if cfg.init else "from the base UNet's encoder, zero convs",
            "condition": "codec sd_latent decode with 0-"
                         f"{cfg.mask_max:.0%} of the y cells masked, random rate point",
            "target": f"{trainer.prediction} prediction of the frozen UNet, MSE",
            "frozen": ["unet", "vae", "text_encoder", "codec"],
            "prompt": cfg.prompt, "steps": step, "batch": cfg.batch, "crop": cfg.crop,
            "lr": cfg.lr, "seed": cfg.seed, "data": data_record, "held_out": HELD_OUT,
            "device": f"{dev} ({torch.get_num_threads()} threads)" if dev.type == "cpu"
                      else f"{dev} ({torch.cuda.get_device_name(dev)})",
            "dtype": str(parts.dtype).replace("torch.", ""),
            "seconds": round(time.monotonic() - t0, 1),
            "loss_first": round(float(np.mean(history[:len(tail)])), 6) if history else None,
            "loss_last": round(float(np.mean(tail)), 6) if tail else None,
            "machine": platform.platform(), "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        }

    out = Path(cfg.out)
    for step in range(1, cfg.steps + 1):
        history.append(trainer.step(sampler.sample(cfg.batch)))
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            rate = step / max(time.monotonic() - t0, 1e-9)
            eta = time.strftime("%H:%M:%S", time.gmtime((cfg.steps - step) / rate))
            recent = history[-cfg.log_every:]
            log(f"control step {step}/{cfg.steps} loss {np.mean(recent):.5f} "
                f"{rate:.2f} step/s eta {eta}")
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            _save(trainer, out, record(step))
    rec = record(cfg.steps)
    _save(trainer, out, rec)
    log(f"saved the control module to {out} ({rec['seconds']} s)")
    return {**rec, "folder": str(out), "history": history}


def build_parser() -> argparse.ArgumentParser:

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True,
                    help="Stable Diffusion 2.1-base folder (diffusers layout) or HF id in the "
                         "cache")
    ap.add_argument("--codec", type=Path, required=True,
                    help="learned codec checkpoint folder with the sd_latent head")
    ap.add_argument("--out", type=Path, required=True, help="ControlNet folder to write")
    ap.add_argument("--init", type=Path, help="continue from this ControlNet folder")
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=512, help="crop size, a multiple of 64")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--mask-max", type=float, default=0.5,
                    help="mask up to this share of the codec latent (default 0.5)")
    ap.add_argument("--prompt", default="", help="training prompt (default: empty)")
    ap.add_argument("--embedding-channels", type=int, default=256,
                    help="channels of the condition embedding (default 256)")
    from discover.train.codec import add_data_arguments

    add_data_arguments(ap)
    ap.add_argument("--no-video", action="store_true", help="train on --images only")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                    help="precision of the frozen parts and autocast on CUDA (auto: bfloat16 "
                         "on CUDA, float32 on CPU); the ControlNet's weights stay float32")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="less GPU memory for some speed")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--revision", help="model revision for a Hugging Face id")
    ap.add_argument("--allow-download", action="store_true",
                    help="fetch a missing --base from the Hugging Face hub")
    ap.add_argument("--json", action="store_true", help="one-line JSON summary on stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from discover.sdk.errors import DiscoverError

    try:
        from discover.sdk.codecs.learned.training import VTEST, VideoSource
        from discover.sink.composers.sd_loading import import_diffusers

        import_diffusers("discover/train/control.py")
    except ImportError as e:
        print(f"error: training needs torch and compressai ({e}): "
              "pip install 'discover-sdk[learned,diffusion]'", file=sys.stderr)
        return 2
    except DiscoverError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    videos = [] if args.no_video else [VideoSource(p, args.first, args.last, args.stride)
                                       for p in (args.video or [VTEST])]
    cfg = ControlTrainConfig(
        base=args.base, codec=args.codec, out=args.out, init=args.init, steps=args.steps,
        batch=args.batch, crop=args.crop, lr=args.lr, mask_max=args.mask_max, prompt=args.prompt,
        embedding_channels=args.embedding_channels, save_every=args.save_every,
        log_every=args.log_every, seed=args.seed, device=args.device, dtype=args.dtype,
        threads=args.threads, revision=args.revision, allow_download=args.allow_download,
        gradient_checkpointing=args.gradient_checkpointing, videos=videos,
        images=args.images or [], use_skimage=not args.no_skimage,
        opencv_photos=args.opencv_photos)
    from discover.train._cli import run_training

    return run_training(lambda log: train_control(cfg, log=log), args.json)


if __name__ == "__main__":
    sys.exit(main())
