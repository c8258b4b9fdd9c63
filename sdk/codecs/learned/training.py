"""Training of the learned codec (seed §3.4), called by ``discover/train/codec.py`` (and later
``discover train codec``).

::

    frames 0-499 of vtest.avi (+ scikit-image photos when installed, + --images folders)
        --random scale, random crop, flip--> batches (B x 3 x crop x crop, RGB in [0, 1])

    one model for all rate points: each sample of a batch draws a rate point k, whose lambda_k
    weighs its distortion and whose learned step_k quantises its y (variable rate, as the gain
    units of Cui et al. 2021 reduced to one scalar per point)

    stage I   all of y reaches g_s:
              loss = mean_b lambda_k(b) * 255^2 * MSE_b + bpp(y) + bpp(z);  aux loss -> z quantiles
    stage II  g_a, h_a, h_s and both entropy models frozen; random 0..mask_max of the y cells
              zeroed (unions of rectangles, like missing task boxes); M and g_s learn to
              rebuild the whole frame from the rest of y and M(z):
              loss = lambda * 255^2 * MSE  (the rate is fixed by the frozen encoder; the bpp of
              the kept cells is logged)

    stage T   (temporal) weights fixed; on consecutive development frames, the index offset per
              rate point and channel that codes y_t+1 - y_hat_t inside the grounded boxes in the
              fewest bits (``temporal.fit_offsets``) -> model.residual_offsets

    every save_every steps and at the end: save_pretrained(<out>/<name>) with the training
    record (data, held-out split, steps per stage, lambdas, device, seconds)

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
from discover.sdk.codecs.learned.checkpoint import CHECKPOINT_ROOT, load_pretrained
from discover.sdk.codecs.learned.entropy import LATENT_STRIDE
from discover.sdk.codecs.learned.model import DiscoverCodecModel, ModelConfig
from discover.sdk.devices import torch_device
from discover.sdk.errors import DiscoverError

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
#: vtest.avi frames below this are the development split; the rest is never trained on
DEV_SPLIT_END = 500
HELD_OUT = ("vtest.avi frames 500-794 are the evaluation split and were never read for "
            "training; neither were OpenCV's stills baboon, board, building, butterfly, "
            "ela_original, fruits, home, licenseplate_motion, messi5, squirrel_cls (the photos "
            "'discover bench codec' scores on)")
#: OpenCV's sample stills kept out of training: the photos 'discover bench codec' scores on
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
HELD_OUT_PHOTOS = ("baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg", "ela_original.jpg",
                   "fruits.jpg", "home.jpg", "licenseplate_motion.jpg", "messi5.jpg",
                   "squirrel_cls.jpg")
#: OpenCV's natural-image stills the shipped checkpoint trained on (--opencv-photos)
TRAIN_PHOTOS = ("Blender_Suzanne1.jpg", "HappyFish.jpg", "aero1.jpg", "aero3.jpg", "aloeL.jpg",
                "aloeR.jpg", "apple.jpg", "basketball1.png", "blox.jpg", "box_in_scene.png",
                "cards.png", "ellipses.jpg", "graf1.png", "graf3.png", "leuvenA.jpg",
                "leuvenB.jpg", "orange.jpg", "pic1.png", "pic2.png", "pic3.png", "pic4.png",
                "pic5.png", "pic6.png", "rubberwhale1.png", "smarties.png", "starry_night.jpg",
                "stuff.jpg")
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                  "hubble_deep_field", "retina", "cat")
#: the shipped rate points, lowest rate first (CompressAI's MSE ladder goes 0.0018 ... 0.0483)
DEFAULT_LAMBDAS = (0.0009, 0.0018, 0.0035, 0.0067, 0.013)
Log = Callable[[str], None]
#: BGR frame -> pixel boxes (x0, y0, x1, y1) the task would code (stage T)
BoxesFn = Callable[[np.ndarray], list[tuple[int, int, int, int]]]


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
    lr_drop_at: float = 0.9  # share of a stage's steps after which lr falls to a tenth
    temporal_pairs: int = 40  # consecutive frame pairs stage T fits the residual model on
    aux_lr: float = 1e-3
    mask_max: float = 0.5
    out: Path = Path("checkpoints")  # a new folder; the shipped checkpoint is never written
    name: str | None = None  # checkpoint folder under out; default <size>
    init: Path | None = None  # start from this checkpoint's float weights (e.g. stage II only)
    save_every: int = 1000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    videos: list[VideoSource] = field(default_factory=lambda: [VideoSource(VTEST)])
    images: list[Path] = field(default_factory=list)  # folders of stills
    use_skimage: bool = True
    opencv_photos: bool = False  # add OpenCV's TRAIN_PHOTOS (never its HELD_OUT_PHOTOS)


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


def _read_folder(folder: Path, only: Sequence[str] | None = None) -> tuple[list[np.ndarray],
                                                                           dict[str, Any]]:
    import cv2

    if not Path(folder).is_dir():
        raise DiscoverError(f"image folder {folder} not found"
                            + (" (apt-get install opencv-doc)" if folder == OPENCV_DATA else ""))
    files = sorted(p for p in Path(folder).iterdir()
                   if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif"}
                   and p.name not in HELD_OUT_PHOTOS  # the benchmark's photos stay unseen
                   and (only is None or p.name in only))
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
            log("scikit-image is not installed: its photos are left out")
    for folder in cfg.images:
        imgs, desc = _read_folder(folder)
        images += imgs
        sources.append(desc)
    if cfg.opencv_photos:
        imgs, desc = _read_folder(OPENCV_DATA, only=TRAIN_PHOTOS)
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


#: what stage II freezes (the encoder, the steps and the whole hyper path; seed §3.4)
STAGE2_FROZEN = ("g_a", "h_a", "h_s", "entropy_bottleneck", "gaussian_conditional", "log_steps")


def initial_steps(lambdas: Sequence[float]) -> tuple[float, ...]:
    """Starting quantisation steps: MSE ~ step^2 / 12 at high rate and lambda ~ 1 / step^2 at
    the optimum, so step_k = sqrt(lambda_mid / lambda_k) (1 at the middle lambda)."""
    mid = float(np.median(lambdas))
    return tuple(round(math.sqrt(mid / lm), 4) for lm in lambdas)


def train_steps(model: DiscoverCodecModel, sampler: CropSampler, *, stage: str,
                lambdas: Sequence[float], steps: int, batch: int, lr: float,
                aux_lr: float = 1e-3, mask_max: float = 0.5, seed: int = 0, log: Log = print,
                log_every: int = 50, on_save: Callable[[int], None] | None = None,
                save_every: int = 0, lr_drop_at: float = 0.9,
                latent_target: Callable[[torch.Tensor], torch.Tensor] | None = None,
                device: torch.device | str = "cpu") -> list[dict[str, float]]:
    """Run ``steps`` optimisation steps of one stage, each sample at a random rate point
    (``lambdas[k]`` with the model's step k); returns per-step metrics."""
    if model.config.head == "sd_latent" and latent_target is None:
        raise DiscoverError("the sd_latent head trains against the Stable Diffusion VAE latent, "
                            "which is not available offline; pass latent_target or train the "
                            "pixels head")
    if len(lambdas) != model.config.rate_points:
        raise DiscoverError(f"{len(lambdas)} lambdas for a model with "
                            f"{model.config.rate_points} rate points")
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
            mod = getattr(model, name)
            if isinstance(mod, torch.nn.Module):
                mod.eval()
    lam = torch.tensor(list(lambdas), dtype=torch.float32, device=device)
    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    t0 = time.monotonic()
    drop_at = int(steps * lr_drop_at) if lr_drop_at < 1 else steps + 1
    for step in range(1, steps + 1):
        if step == drop_at:  # a short low-rate tail settles the weights (lr / 10)
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        x = sampler.sample(batch).to(device)
        rate = torch.from_numpy(rng.integers(len(lambdas), size=batch)).to(device)
        keep = None
        if stage == "II":
            grid = (x.shape[2] // LATENT_STRIDE, x.shape[3] // LATENT_STRIDE)
            keep = random_keep(batch, grid, mask_max, rng).to(device)
        out = model(x, keep, rate)
        target = x if latent_target is None else latent_target(x)
        mse_b = (out["x_hat"] - target).pow(2).flatten(1).mean(1)
        mse = mse_b.mean()
        rate_bpp = bpp(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
        dist = (lam[rate] * 255.0**2 * mse_b).mean()
        loss = dist + rate_bpp if stage == "I" else dist
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if aux_opt is not None:
            aux_opt.zero_grad(set_to_none=True)
            aux = model.aux_loss()
            aux.backward()
            aux_opt.step()
        m = {"step": step, "loss": loss.item(), "mse": mse.item(), "bpp": rate_bpp.item(),
             "psnr": float(10 * torch.log10(1.0 / mse.detach().clamp_min(1e-10)))}
        if keep is not None:
            m["kept"] = float(keep.mean())
        history.append(m)
        if log_every and (step % log_every == 0 or step == steps):
            recent = history[-log_every:]
            rate_s = step / max(time.monotonic() - t0, 1e-9)
            eta = (steps - step) / rate_s
            st = " ".join(f"{v:.3f}" for v in torch.exp(model.log_steps.detach()).tolist())
            log(f"stage {stage} step {step}/{steps} "
                f"loss {np.mean([r['loss'] for r in recent]):.4f} "
                f"bpp {np.mean([r['bpp'] for r in recent]):.4f} "
                f"psnr {np.mean([r['psnr'] for r in recent]):.2f} dB steps [{st}] "
                f"{rate_s:.2f} step/s eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        if on_save is not None and save_every and step % save_every == 0 and step < steps:
            on_save(step)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return history


def start_model(cfg: TrainConfig, lambdas: Sequence[float]) -> tuple[DiscoverCodecModel,
                                                                      list[dict[str, Any]]]:
    """A fresh model, or one that starts from ``cfg.init``'s float weights. A checkpoint with
    other rate points keeps its transforms and entropy models and gets new steps (so rate
    points can be added to a trained model); the coding tables are rebuilt when saving."""
    steps = initial_steps(lambdas)
    if cfg.init is None:
        return DiscoverCodecModel(ModelConfig.preset(cfg.size, steps=steps, **cfg.model)), []
    try:
        ckpt = load_pretrained(cfg.init)
        stages = _timed_stages(ckpt.training)
        if ckpt.model.config.rate_points == len(lambdas):
            return ckpt.model, stages
        cfg_dict, state = ckpt.model.config.to_dict(), ckpt.model.state_dict()
    except DiscoverError:  # tables of another layout: take the float weights only
        cfg_dict, state, stages = read_float_weights(cfg.init)
    cfg_dict = {**cfg_dict, "steps": steps}
    model = DiscoverCodecModel(ModelConfig.from_dict(cfg_dict))
    own = model.state_dict()
    tables = ("entropy_bottleneck._", "gaussian_conditional.")  # compressai resizes these
    usable = {k: v for k, v in state.items() if not k.startswith("hyper_fixed.")
              and k not in ("log_steps", "residual_offsets") and k in own
              and (own[k].shape == v.shape or k.startswith(tables))}
    missing = [k for k in own if k not in usable and not k.startswith("hyper_fixed.")
               and k not in ("log_steps", "residual_offsets")]
    if missing:
        raise DiscoverError(f"{cfg.init} does not fit a {cfg.size} model (missing "
                            f"{', '.join(missing[:3])}); pass a checkpoint of the same size")
    model.load_state_dict(usable, strict=False)
    return model, list(stages)


def read_float_weights(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor],
                                              list[dict[str, Any]]]:
    """Model config, raw state and stages of a checkpoint folder, without building the model
    (for checkpoints whose coding-table layout differs from this version's)."""
    import json

    from safetensors.torch import load_file

    cfg = json.loads((Path(folder) / "config.json").read_text())
    model_cfg = {k: v for k, v in cfg["model"].items()
                 if k in {f for f in ModelConfig.__dataclass_fields__}}
    return model_cfg, load_file(str(Path(folder) / cfg.get("weights", "model.safetensors"))), \
        _timed_stages(cfg.get("training") or {})


def _timed_stages(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The stages of a training record, each with its seconds (older records kept one total)."""
    stages = [dict(s) for s in record.get("stages", [])]
    if len(stages) == 1 and "seconds" not in stages[0] and "seconds" in record:
        stages[0]["seconds"] = record["seconds"]
    for k in ("lambda", "lambdas"):
        if k in record:
            for s in stages:
                s.setdefault(k, record[k])
    return stages


def refuse_shipped_folder(folder: Path) -> None:
    """Training never writes into the shipped checkpoints: a new hash there would make sinks
    with the shipped weights refuse every stream."""
    target, shipped = folder.resolve(), CHECKPOINT_ROOT.resolve()
    if target == shipped or shipped in target.parents:
        raise DiscoverError(f"--out {folder} is inside the shipped checkpoints ({shipped}); "
                            "train into a new folder, e.g. --out checkpoints")


def train_codec(cfg: TrainConfig, log: Log = print,
                latent_target: Callable[[torch.Tensor], torch.Tensor] | None = None,
                images: Sequence[np.ndarray] | None = None,
                data_record: dict[str, Any] | None = None,
                boxes_fn: BoxesFn | None = None) -> dict[str, Any]:
    """Train one checkpoint with a rate point per lambda through the configured stages; returns
    its summary (folder, hash, steps, final metrics, per-step history)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = torch_device(cfg.device, "--device").type
    if cfg.crop % 64:
        raise DiscoverError(f"--crop must be a multiple of 64 (got {cfg.crop})")
    if not 0.0 <= cfg.mask_max <= 1.0:
        raise DiscoverError(f"--mask-max must be in [0, 1] (got {cfg.mask_max})")
    bad = [s for s in cfg.stages if s not in ("I", "II", "T")]
    if bad or not cfg.stages:
        raise DiscoverError(f"stages are I, II and T (got {', '.join(bad) or 'none'})")
    if "T" in cfg.stages and boxes_fn is None:
        raise DiscoverError("stage T needs a grounder for the boxes (boxes_fn)")
    lambdas = sorted(cfg.lambdas)
    if not lambdas or min(lambdas) <= 0 or len(set(lambdas)) != len(lambdas):
        raise DiscoverError("give one or more distinct positive lambdas")
    if images is None and any(st in cfg.stages for st in ("I", "II")):
        images, data_record = load_training_images(cfg, log)
    data_record = data_record or {"sources": ["in-memory images"], "held_out": HELD_OUT}
    seed = cfg.seed
    torch.manual_seed(seed)
    random.seed(seed)
    name = cfg.name or cfg.size
    refuse_shipped_folder(cfg.out / name)
    model, stages_done = start_model(cfg, lambdas)
    sampler = CropSampler(images, cfg.crop, seed) if images is not None else None
    folder = Path(cfg.out) / name
    history: list[dict[str, Any]] = []

    def record(stages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "stage": stages[-1]["stage"] if stages else "none", "lambdas": lambdas,
            "rate_points": [{"quality": k + 1, "lambda": lm} for k, lm in enumerate(lambdas)],
            "loss": "lambda_k*255^2*MSE + bpp per sample, k a random rate point (stage I); "
                    f"lambda_k*255^2*MSE with 0-{cfg.mask_max:.0%} of y masked, encoder, steps "
                    "and hyper path frozen (stage II)",
            "steps": sum(s["steps"] for s in stages), "stages": stages,
            "batch": cfg.batch, "crop": cfg.crop, "seed": seed,
            "data": data_record, "held_out": HELD_OUT,
            "device": f"{dev} ({torch.get_num_threads()} threads)" if dev == "cpu" else dev,
            "machine": platform.platform(), "torch": torch.__version__,
            "seconds": round(sum(float(s.get("seconds", 0.0)) for s in stages), 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": {k: (str(v) if isinstance(v, Path) else v)
                       for k, v in asdict(cfg).items() if k not in ("videos", "images")},
        }

    for stage in cfg.stages:
        if stage == "T":
            t_stage = time.monotonic()
            assert boxes_fn is not None
            fit = fit_residual_model(model, cfg.videos, boxes_fn, pairs=cfg.temporal_pairs,
                                     log=log)
            stages_done.append({"stage": "T", "steps": 0, **fit,
                                "seconds": round(time.monotonic() - t_stage, 1)})
            continue
        assert sampler is not None
        steps = cfg.steps_stage1 if stage == "I" else cfg.steps_stage2
        if steps <= 0:
            continue
        log(f"[{name}] stage {stage}: {steps} steps, lambdas {', '.join(map(str, lambdas))}, "
            f"batch {cfg.batch}x{cfg.crop}px on {dev}")

        t_stage = time.monotonic()

        def save(step: int, stage: str = stage, t0: float = t_stage) -> None:
            h = model.save_pretrained(folder, training=record(stages_done + [
                {"stage": stage, "steps": step, "lambdas": lambdas,
                 "seconds": round(time.monotonic() - t0, 1)}]))
            model.to(dev)
            log(f"[{name}] saved {folder} at step {step} ({h})")

        hist = train_steps(model, sampler, stage=stage, lambdas=lambdas, steps=steps,
                           batch=cfg.batch, lr=cfg.lr if stage == "I" else cfg.lr_stage2,
                           aux_lr=cfg.aux_lr, mask_max=cfg.mask_max, seed=seed, log=log,
                           log_every=cfg.log_every, on_save=save, save_every=cfg.save_every,
                           lr_drop_at=cfg.lr_drop_at,
                           latent_target=latent_target, device=dev)
        history += [{**h, "stage": stage} for h in hist]
        stages_done.append({"stage": stage, "steps": steps, "lambdas": lambdas,
                            "seconds": round(time.monotonic() - t_stage, 1)})
    model.cpu()
    h = model.save_pretrained(folder, training=record(stages_done))
    log(f"[{name}] done: {folder} ({h})")
    last = history[-min(50, len(history)):]
    return {"name": name, "folder": str(folder), "hash": h, "lambdas": lambdas,
            "steps": sum(s["steps"] for s in stages_done), "history": history,
            "final": {k: float(np.mean([r[k] for r in last])) for k in ("loss", "bpp", "psnr")}
            if last else {}}


# -- stage T: the residual model --------------------------------------------------------------

def consecutive_pairs(videos: Sequence[VideoSource], pairs: int) -> list[tuple[np.ndarray,
                                                                              np.ndarray]]:
    """``pairs`` (frame t, frame t+1) BGR pairs spread evenly over the videos' frame ranges
    (development split only, as for stages I and II)."""
    import av

    per = max(1, -(-pairs // max(1, len(videos))))
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for v in videos:
        last = min(v.last, DEV_SPLIT_END - 1) if v.path.name == VTEST.name else v.last
        starts = set(np.linspace(v.first, max(v.first, last - 1), per).astype(int).tolist())
        prev = None
        try:
            with av.open(str(v.path)) as c:
                for i, f in enumerate(c.decode(video=0)):
                    if i > last:
                        break
                    img = f.to_ndarray(format="bgr24")
                    if prev is not None and i - 1 in starts:
                        out.append((prev, img))
                    prev = img
        except (av.error.FFmpegError, OSError) as e:
            raise DiscoverError(f"cannot read training video {v.path}: {e}") from None
    return out[:pairs]


@torch.no_grad()
def fit_residual_model(model: DiscoverCodecModel, videos: Sequence[VideoSource],
                       boxes_fn: BoxesFn, pairs: int = 40, log: Log = print) -> dict[str, Any]:
    """Fit ``model.residual_offsets`` on consecutive frames: per rate point, the residuals
    round((y_t+1 - y_hat_t) / step) inside the boxes of frame t+1, with the scale indexes z_t+1
    gives (what the temporal coder codes). Returns the record of the fit."""
    from discover.sdk.codecs.learned.entropy import latent_box
    from discover.sdk.codecs.learned.intra import IntraCoder
    from discover.sdk.codecs.learned.model import pad_to_grid
    from discover.sdk.codecs.learned.temporal import fit_offsets

    model.eval().cpu()
    if not model.coding_ready:
        model.update(force=True)
    coder = model.coder()
    intra = IntraCoder(coder)
    table = model.gaussian_conditional.scale_table.double().numpy()
    samples: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(coder.rate_points)]
    data = consecutive_pairs(videos, pairs)
    if not data:
        raise DiscoverError("stage T found no consecutive frames in the training videos")
    for a, b in data:
        h, w = b.shape[:2]
        mask = np.zeros(((-(-h // 64)) * 4, (-(-w // 64)) * 4), bool)
        for box in boxes_fn(b):
            lb = latent_box(box, w, h)
            if lb is not None:
                mask[lb[1]:lb[3], lb[0]:lb[2]] = True
        if not mask.any():
            continue
        lat = []
        for img in (a, b):
            x = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1])).permute(2, 0, 1)[None]
            lat.append(model.latents(pad_to_grid(x.float() / 255.0)))
        (ya, za), (yb, zb) = lat
        for r in range(coder.rate_points):
            y_hat_a, _ = intra.intra_latent(ya, za, r)
            _, idx_b = intra.intra_latent(yb, zb, r)
            sym = np.rint((yb - y_hat_a) / coder.step(r)).astype(np.int32)
            samples[r].append((sym[:, mask], idx_b[:, mask]))
    if not samples[0]:
        raise DiscoverError("stage T: the grounder found no boxes on the training pairs")
    record: dict[str, Any] = {"pairs": len(data), "rate_points": []}
    for r, ss in enumerate(samples):
        offsets, bits = fit_offsets(ss, table)
        model.residual_offsets[r] = torch.from_numpy(offsets)
        cells = int(sum(s[0].shape[1] for s in ss))
        record["rate_points"].append({"quality": r + 1, "cells": cells,
                                      "mean_offset": round(float(offsets.mean()), 2),
                                      **{k: round(v, 4) for k, v in bits.items()}})
        log(f"stage T rate point {r + 1}: {cells} cells, residual bits/cell "
            f"{bits['bits_per_cell_before']:.3f} -> {bits['bits_per_cell_after']:.3f} "
            f"(mean offset {offsets.mean():.1f})")
    return record
