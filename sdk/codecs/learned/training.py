"""Training of the learned codec (seed §3.4), called by ``tools/train_codec.py`` (and later
``discover train codec``).

::

    frames 0-499 of vtest.avi (+ scikit-image photos when installed, + --images folders)
        --random scale, random crop, flip--> batches (B x 3 x crop x crop, RGB in [0, 1])

    stage I   (per lambda) all of y reaches g_s:
              loss = lambda * 255^2 * MSE(x, x_hat) + bpp(y) + bpp(z);  aux loss -> z quantiles
    stage II  g_a, h_a, h_s and both entropy models frozen; random 0..mask_max of the y cells
              zeroed (unions of rectangles, like missing task boxes); M and g_s learn to
              rebuild the whole frame from the rest of y and M(z):
              loss = lambda * 255^2 * MSE  (the rate is fixed by the frozen encoder; the bpp of
              the kept cells is logged)

    every save_every steps and at the end: save_pretrained(<out>/<name>) with the training
    record (data, held-out split, steps per stage, lambda, device, seconds)

The pixel head trains here. The ``sd_latent`` head's target is the Stable Diffusion VAE's
latent of the frame; no SD weights exist offline, so it needs ``latent_target`` (a callable
frame batch -> 4 x H/8 x W/8 tensor) and refuses to train without one.

vtest.avi frames 500 and later are this project's evaluation split: the loader never reads
them, whatever range is asked, and every checkpoint's record says so.
"""

from __future__ import annotations

import math
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sdk.codecs.learned.checkpoint import CHECKPOINT_ROOT, load_pretrained
from sdk.codecs.learned.entropy import LATENT_STRIDE
from sdk.codecs.learned.model import DiscoverCodecModel, ModelConfig
from sdk.errors import DiscoverError

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
#: vtest.avi frames below this are the development split; the rest is never trained on
DEV_SPLIT_END = 500
HELD_OUT = ("vtest.avi frames 500-794 are the evaluation split and were never read for "
            "training")
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                  "hubble_deep_field", "retina", "cat")
DEFAULT_LAMBDAS = (0.0018, 0.0035, 0.0067)
Log = Callable[[str], None]


@dataclass
class VideoSource:
    """Frames ``first..last`` (inclusive) of a video, every ``stride``-th."""

    path: Path
    first: int = 0
    last: int = DEV_SPLIT_END - 1
    stride: int = 2


@dataclass
class TrainConfig:
    """What :func:`train_codec` trains (defaults: the shipped small model's recipe)."""

    size: str = "small"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    stages: tuple[str, ...] = ("I", "II")
    steps_stage1: int = 20000
    steps_stage2: int = 5000
    batch: int = 8
    crop: int = 256
    lr: float = 1e-4
    lr_stage2: float = 5e-5
    aux_lr: float = 1e-3
    mask_max: float = 0.5
    out: Path = CHECKPOINT_ROOT
    names: tuple[str, ...] | None = None  # one folder per lambda; default <size>-q1..qn
    init: Path | None = None  # start from this checkpoint (e.g. stage II only)
    save_every: int = 1000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    videos: list[VideoSource] = field(default_factory=lambda: [VideoSource(VTEST)])
    images: list[Path] = field(default_factory=list)  # folders of stills
    use_skimage: bool = True


# -- data -------------------------------------------------------------------------------------

def _read_video(src: VideoSource) -> tuple[list[np.ndarray], dict[str, Any]]:
    import av

    last = src.last
    guarded = src.path.name == VTEST.name
    if guarded:
        last = min(last, DEV_SPLIT_END - 1)
    if not src.path.is_file():
        hint = " (apt-get install opencv-doc)" if guarded else ""
        raise DiscoverError(f"training video {src.path} not found{hint}; pass another with --video")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(src.path)) as c:
            for i, f in enumerate(c.decode(video=0)):
                if i > last:
                    break
                if i >= src.first and (i - src.first) % src.stride == 0:
                    frames.append(f.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as e:
        raise DiscoverError(f"cannot read training video {src.path}: {e}") from None
    if not frames:
        raise DiscoverError(f"no frames {src.first}-{last} in {src.path}")
    desc = {"path": str(src.path), "frames": f"{src.first}-{src.first + (len(frames) - 1) * src.stride}",
            "stride": src.stride, "count": len(frames)}
    if guarded:
        desc["split"] = f"development split (frames < {DEV_SPLIT_END})"
    return frames, desc


def _read_skimage() -> tuple[list[np.ndarray], dict[str, Any] | None]:
    try:
        import skimage.data as data
    except ImportError:
        return [], None
    out, names = [], []
    for name in SKIMAGE_PHOTOS:
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            img = np.asarray(fn())
        except Exception:  # noqa: BLE001 - some photos are fetched on demand; skip those
            continue
        if img.ndim == 3 and img.shape[2] >= 3 and img.dtype == np.uint8:
            out.append(np.ascontiguousarray(img[:, :, :3]))
            names.append(name)
    return out, ({"source": "scikit-image data", "photos": names} if names else None)


def _read_folder(folder: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    import cv2

    files = sorted(p for p in Path(folder).iterdir()
                   if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif"})
    out = []
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None:
            out.append(np.ascontiguousarray(img[:, :, ::-1]))
    if not out:
        raise DiscoverError(f"no readable images in {folder}")
    return out, {"path": str(folder), "count": len(out)}


def load_training_images(cfg: TrainConfig, log: Log = print) -> tuple[list[np.ndarray],
                                                                      dict[str, Any]]:
    """RGB uint8 images to crop from, and the description that goes into the record."""
    images: list[np.ndarray] = []
    sources: list[dict[str, Any]] = []
    for v in cfg.videos:
        frames, desc = _read_video(v)
        images += frames
        sources.append(desc)
    if cfg.use_skimage:
        photos, desc = _read_skimage()
        if desc:
            images += photos
            sources.append(desc)
        else:
            log("scikit-image is not installed: training on the videos only")
    for folder in cfg.images:
        imgs, desc = _read_folder(folder)
        images += imgs
        sources.append(desc)
    if not images:
        raise DiscoverError("no training images; pass --video or --images")
    log(f"training data: {len(images)} images from {len(sources)} sources")
    return images, {"sources": sources, "crop": cfg.crop, "held_out": HELD_OUT,
                    "augmentation": "random downscale 0.5-1 (half the time), crop, h-flip"}


class CropSampler:
    """Random crops (optionally downscaled first, flipped) as a float batch."""

    def __init__(self, images: Sequence[np.ndarray], crop: int, seed: int) -> None:
        self.images = [im for im in images if min(im.shape[:2]) >= crop]
        if not self.images:
            raise DiscoverError(f"no training image is at least {crop} px on its short side")
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> torch.Tensor:
        import cv2

        out = np.empty((batch, self.crop, self.crop, 3), np.uint8)
        c = self.crop
        for i in range(batch):
            img = self.images[int(self.rng.integers(len(self.images)))]
            h, w = img.shape[:2]
            lo = max(c / min(h, w), 0.5)
            if lo < 1 and self.rng.random() < 0.5:
                s = float(self.rng.uniform(lo, 1.0))
                img = cv2.resize(img, (max(c, round(w * s)), max(c, round(h * s))),
                                 interpolation=cv2.INTER_AREA)
                h, w = img.shape[:2]
            y = int(self.rng.integers(h - c + 1))
            x = int(self.rng.integers(w - c + 1))
            patch = img[y:y + c, x:x + c]
            out[i] = patch[:, ::-1] if self.rng.random() < 0.5 else patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


def random_keep(batch: int, grid: tuple[int, int], mask_max: float,
                rng: np.random.Generator) -> torch.Tensor:
    """Stage II masks (B, 1, h, w): 1 = cell kept. For each sample a share U(0, mask_max) of the
    cells is zeroed as a union of random rectangles (boxes that did not arrive)."""
    h, w = grid
    keep = np.ones((batch, 1, h, w), np.float32)
    for b in range(batch):
        target = rng.uniform(0.0, mask_max) * h * w
        for _ in range(64):
            if (keep[b, 0] == 0).sum() >= target:
                break
            rh = int(rng.integers(1, max(2, h // 2 + 1)))
            rw = int(rng.integers(1, max(2, w // 2 + 1)))
            y0, x0 = int(rng.integers(h - rh + 1)), int(rng.integers(w - rw + 1))
            keep[b, 0, y0:y0 + rh, x0:x0 + rw] = 0.0
    return torch.from_numpy(keep)


# -- loop -------------------------------------------------------------------------------------

def bpp(likelihoods: dict[str, torch.Tensor], pixels: int) -> torch.Tensor:
    return sum(torch.log(v).sum() for v in likelihoods.values()) / (-math.log(2) * pixels)


#: what stage II freezes (the encoder and the whole hyper path; seed §3.4)
STAGE2_FROZEN = ("g_a", "h_a", "h_s", "entropy_bottleneck", "gaussian_conditional")


def train_steps(model: DiscoverCodecModel, sampler: CropSampler, *, stage: str, lmbda: float,
                steps: int, batch: int, lr: float, aux_lr: float = 1e-3, mask_max: float = 0.5,
                seed: int = 0, log: Log = print, log_every: int = 50,
                on_save: Callable[[int], None] | None = None, save_every: int = 0,
                latent_target: Callable[[torch.Tensor], torch.Tensor] | None = None,
                device: torch.device | str = "cpu") -> list[dict[str, float]]:
    """Run ``steps`` optimisation steps of one stage; returns per-step metrics."""
    if model.config.head == "sd_latent" and latent_target is None:
        raise DiscoverError("the sd_latent head trains against the Stable Diffusion VAE latent, "
                            "which is not available offline; pass latent_target or train the "
                            "pixels head")
    device = torch.device(device)
    model.to(device).train()
    frozen = STAGE2_FROZEN if stage == "II" else ()
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] not in frozen)
    params = [p for n, p in model.named_parameters()
              if p.requires_grad and not n.endswith("quantiles")]
    opt = torch.optim.Adam(params, lr=lr)
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles")
                  and p.requires_grad]
    aux_opt = torch.optim.Adam(aux_params, lr=aux_lr) if aux_params else None
    if stage == "II":  # frozen parts behave as at coding time
        for name in frozen:
            getattr(model, name).eval()
    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    t0 = time.monotonic()
    for step in range(1, steps + 1):
        x = sampler.sample(batch).to(device)
        keep = None
        if stage == "II":
            grid = (x.shape[2] // LATENT_STRIDE, x.shape[3] // LATENT_STRIDE)
            keep = random_keep(batch, grid, mask_max, rng).to(device)
        out = model(x, keep)
        target = x if latent_target is None else latent_target(x)
        mse = F.mse_loss(out["x_hat"], target)
        rate = bpp(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
        dist = lmbda * 255.0**2 * mse
        loss = dist + rate if stage == "I" else dist
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if aux_opt is not None:
            aux_opt.zero_grad(set_to_none=True)
            aux = model.aux_loss()
            aux.backward()
            aux_opt.step()
        m = {"step": step, "loss": loss.item(), "mse": mse.item(), "bpp": rate.item(),
             "psnr": float(10 * torch.log10(1.0 / mse.detach().clamp_min(1e-10)))}
        if keep is not None:
            m["kept"] = float(keep.mean())
        history.append(m)
        if log_every and (step % log_every == 0 or step == steps):
            recent = history[-log_every:]
            rate_s = step / max(time.monotonic() - t0, 1e-9)
            eta = (steps - step) / rate_s
            log(f"stage {stage} lambda={lmbda:g} step {step}/{steps} "
                f"loss {np.mean([r['loss'] for r in recent]):.4f} "
                f"bpp {np.mean([r['bpp'] for r in recent]):.4f} "
                f"psnr {np.mean([r['psnr'] for r in recent]):.2f} dB "
                f"{rate_s:.2f} step/s eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        if on_save is not None and save_every and step % save_every == 0 and step < steps:
            on_save(step)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return history


def train_codec(cfg: TrainConfig, log: Log = print,
                latent_target: Callable[[torch.Tensor], torch.Tensor] | None = None,
                images: Sequence[np.ndarray] | None = None,
                data_record: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train one checkpoint per lambda through the configured stages; returns a summary per
    checkpoint (folder, hash, steps, final metrics, per-step history)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.crop % 64:
        raise DiscoverError(f"--crop must be a multiple of 64 (got {cfg.crop})")
    if not 0.0 <= cfg.mask_max <= 1.0:
        raise DiscoverError(f"--mask-max must be in [0, 1] (got {cfg.mask_max})")
    bad = [s for s in cfg.stages if s not in ("I", "II")]
    if bad or not cfg.stages:
        raise DiscoverError(f"stages must be I and/or II (got {', '.join(bad) or 'none'})")
    if images is None:
        images, data_record = load_training_images(cfg, log)
    data_record = data_record or {"sources": ["in-memory images"], "held_out": HELD_OUT}
    lambdas = sorted(cfg.lambdas)
    names = list(cfg.names or [f"{cfg.size}-q{i + 1}" for i in range(len(lambdas))])
    if len(names) != len(lambdas):
        raise DiscoverError("give one name per lambda")
    return [_train_one(cfg, lmbda, name, cfg.seed + k, images, data_record, dev, log,
                       latent_target)
            for k, (lmbda, name) in enumerate(zip(lambdas, names, strict=True))]


def _train_one(cfg: TrainConfig, lmbda: float, name: str, seed: int,
               images: Sequence[np.ndarray], data_record: dict[str, Any], dev: str, log: Log,
               latent_target: Callable[[torch.Tensor], torch.Tensor] | None) -> dict[str, Any]:
    """All configured stages for one lambda, saved to ``<out>/<name>``."""
    torch.manual_seed(seed)
    random.seed(seed)
    stages_done: list[dict[str, Any]] = []
    if cfg.init is not None:
        ckpt = load_pretrained(cfg.init)
        model = ckpt.model
        stages_done = list(ckpt.training.get("stages", []))
    else:
        model = DiscoverCodecModel(ModelConfig.preset(cfg.size, **cfg.model))
    sampler = CropSampler(images, cfg.crop, seed)
    folder = Path(cfg.out) / name
    history: list[dict[str, Any]] = []
    t_start = time.monotonic()

    def record(stages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "stage": stages[-1]["stage"] if stages else "none", "lambda": lmbda,
            "loss": "lambda*255^2*MSE + bpp (stage I); lambda*255^2*MSE with 0-"
                    f"{cfg.mask_max:.0%} of y masked, encoder and hyper path frozen (stage II)",
            "steps": sum(s["steps"] for s in stages), "stages": stages,
            "batch": cfg.batch, "crop": cfg.crop, "seed": seed,
            "data": data_record, "held_out": HELD_OUT,
            "device": f"{dev} ({torch.get_num_threads()} threads)" if dev == "cpu" else dev,
            "machine": platform.platform(), "torch": torch.__version__,
            "seconds": round(time.monotonic() - t_start, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": {k: (str(v) if isinstance(v, Path) else v)
                       for k, v in asdict(cfg).items() if k not in ("videos", "images")},
        }

    for stage in cfg.stages:
        steps = cfg.steps_stage1 if stage == "I" else cfg.steps_stage2
        if steps <= 0:
            continue
        log(f"[{name}] stage {stage}: {steps} steps, lambda {lmbda:g}, "
            f"batch {cfg.batch}x{cfg.crop}px on {dev}")

        def save(step: int, stage: str = stage) -> None:
            h = model.save_pretrained(folder, training=record(
                stages_done + [{"stage": stage, "steps": step}]))
            model.to(dev)
            log(f"[{name}] saved {folder} at step {step} ({h})")

        hist = train_steps(model, sampler, stage=stage, lmbda=lmbda, steps=steps,
                           batch=cfg.batch, lr=cfg.lr if stage == "I" else cfg.lr_stage2,
                           aux_lr=cfg.aux_lr, mask_max=cfg.mask_max, seed=seed, log=log,
                           log_every=cfg.log_every, on_save=save, save_every=cfg.save_every,
                           latent_target=latent_target, device=dev)
        history += [{**h, "stage": stage} for h in hist]
        stages_done.append({"stage": stage, "steps": steps})
    model.cpu()
    h = model.save_pretrained(folder, training=record(stages_done))
    log(f"[{name}] done: {folder} ({h})")
    last = history[-min(50, len(history)):]
    return {"name": name, "folder": str(folder), "hash": h, "lambda": lmbda,
            "steps": sum(s["steps"] for s in stages_done), "history": history,
            "final": {k: float(np.mean([r[k] for r in last])) for k in ("loss", "bpp", "psnr")}
            if last else {}}
