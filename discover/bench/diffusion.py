"""``discover bench diffusion``: sink throughput of the Stable Diffusion composers.

Frames of the sample clip (or ``--source``), center-cropped and resized to ``--size`` square, go
through the edge pipeline in process (discover.bench.tasks.OursPipeline: nanodet regions, the
default learned codec at quality 3) into MQTT packets; a sink worker (sink.pipeline.SinkPipeline:
reassembly -> codec decompress -> composer -> the ``regions`` task model, nothing written) takes
them frame by frame for each composer of ``--composers``, and for the Stable Diffusion ones
(``diffusion``, ``sd-inpaint``) at each step count of ``--steps``::

    clip --crop, resize--> N frames --OursPipeline: nanodet, learned codec q3--> packets
        side + task            -> direct, diffusion, sd-inpaint (SD composes what was not sent)
        side + task + rest     -> background (rest every 10th frame and on change, as the edge)
    per configuration: models loaded (timed apart: load_s), frame 0 warm-up, frames 1.. timed

Per configuration: seconds per frame (median over the timed frames) and frames/s, and its parts:
codec decode, compose, the denoising loop (``sample``), seconds per denoising step (the loop's
time over the UNet calls it made; one call per step, batched x2 under classifier-free guidance),
UNet and ControlNet calls per frame (forward hooks), and the device (GPU name or CPU model and
torch threads), dtype, torch / diffusers / transformers versions. ``--max-seconds`` bounds each
configuration: a frame that would end past it (estimated from the last frame, or for a first
frame from the composer's previous step count) is not started, and the result says so; with no
timed frame the warm-up frame's figures are reported, flagged ``from_warmup``.

Weights: ``--base`` (SD 2.1-base in diffusers layout), ``--controlnet`` (the control module,
discover/train/control.py) and ``--inpaint`` (SD 2 inpainting; without it ``sd-inpaint`` runs on
``--base``, blending the known area each step). Or ``--random-weights [DIR]``: Stable Diffusion
2.1-base's *architecture* with random weights (UNet, VAE, OpenCLIP ViT-H text tower, a ControlNet
as discover/train/control.py makes one, a 9-channel inpainting UNet; the real CLIP tokenizer from
open_clip's BPE vocabulary), written once into DIR (default ``out/sd21-random``, float16 on disk,
about 5 GB) and loaded back through the composers' own loaders. Speed depends on the architecture,
not on the weight values, so those timings are real; the images mean nothing, and the output
says so. Parameter counts are checked against SD 2.1-base's published ones.

Writes ``<out>/diffusion.json`` and ``<out>/diffusion_side_by_side.png`` (the last frame:
original / direct / each Stable Diffusion configuration).
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from discover.progress import Progress
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.errors import DiscoverError

DEFAULT_RANDOM_DIR = Path("out/sd21-random")
DEFAULT_COMPOSERS = ("direct", "background", "diffusion", "sd-inpaint")
DEFAULT_STEPS = (8, 50)
QUALITY = 3  # the learned codec's rate point (its middle one of five)
REST_INTERVAL = 10  # the edge's default
CAMERA_PREFIX = "bench"  # discover.bench.tasks.OursPipeline's topic prefix
RANDOM_NOTE = ("RANDOM WEIGHTS: Stable Diffusion 2.1-base architecture with random weights; the "
               "timings are real for the architecture, the images mean nothing")

# -- Stable Diffusion 2.1-base's architecture (stabilityai/stable-diffusion-2-1-base configs) ----

SD21_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"),
    "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "flip_sin_to_cos": True, "freq_shift": 0, "center_input_sample": False,
    "downsample_padding": 1, "mid_block_scale_factor": 1}
SD21_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "act_fn": "silu", "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215}
#: the OpenCLIP ViT-H/14 text tower SD 2.x uses (23 of its 24 layers: the penultimate output);
#: token ids those of the real CLIP tokenizer (SD 2.x pads with "!", id 0)
SD21_TEXT: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096,
    "num_attention_heads": 16, "num_hidden_layers": 23, "max_position_embeddings": 77,
    "hidden_act": "gelu", "projection_dim": 512, "layer_norm_eps": 1e-5,
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0}
#: SD 2.1-base's scheduler_config.json as PNDMScheduler arguments (the composers read it as
#: DDIM / DPM); the file also says ``"clip_sample": false``, which write_random_sd21 adds
SD21_SCHEDULE: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "prediction_type": "epsilon"}
CONTROL_EMBEDDING = 256  # discover/train/control.py's default condition embedding width
#: published parameter counts of SD 2.1-base's parts
PUBLISHED_PARAMS = {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863}
PARAM_TOLERANCE = 0.005  # relative
RANDOM_FORMAT = "discover-sd21-random/1"
RANDOM_MARKER = "random_weights.json"
RANDOM_PARTS = {"base": "sd21-base", "controlnet": "controlnet", "inpaint": "sd2-inpaint"}


# -- the CLIP tokenizer -------------------------------------------------------------------------

def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte alphabet: printable bytes as themselves, the rest shifted past 255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    order = keep + [b for b in range(256) if b not in keep]
    return [chars[b] for b in order]


def write_clip_tokenizer(folder: Path) -> Path:
    """A real CLIPTokenizer (49408 tokens, as SD 2.1's) from open_clip's BPE merges, saved into
    ``folder`` with ``save_pretrained``."""
    try:
        import open_clip
        from transformers import CLIPTokenizer
    except ImportError as e:
        raise DiscoverError(f"the CLIP tokenizer is built from open_clip's BPE vocabulary "
                            f"({type(e).__name__}: {e}); pip install open_clip_torch") from None
    gz = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(gz.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # the merges CLIP uses (line 0 is a header)
    alphabet = _bytes_to_unicode()
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        (raw / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"),
                            model_max_length=77, pad_token="!")  # SD 2.x pads with "!"
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return folder


# -- SD 2.1-base architecture with random weights ------------------------------------------------

def build_sd21(part: str, device: str = "cpu", unet: Any = None) -> Any:
    """One part of SD 2.1-base with random weights on ``device`` (``meta``: shapes only, no
    memory): ``unet``, ``inpaint_unet`` (9 input channels, as SD 2 inpainting), ``vae``,
    ``text_encoder`` or ``controlnet`` (discover.train.control.new_controlnet of ``unet``, or of a
    fresh one)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        if part == "unet":
            return UNet2DConditionModel(**SD21_UNET)
        if part == "inpaint_unet":
            return UNet2DConditionModel(**{**SD21_UNET, "in_channels": 9})
        if part == "vae":
            return AutoencoderKL(**SD21_VAE)
        if part == "text_encoder":
            return CLIPTextModel(CLIPTextConfig(**SD21_TEXT))
        if part == "controlnet":
            from discover.train.control import new_controlnet

            return new_controlnet(unet if unet is not None else build_sd21("unet", device),
                                  CONTROL_EMBEDDING)
    raise ValueError(f"unknown SD 2.1 part {part!r}")


def count_params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def check_params(counts: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Each count next to SD 2.1-base's published one (where there is one) and whether they
    agree within PARAM_TOLERANCE."""
    out: dict[str, dict[str, Any]] = {}
    for name, n in counts.items():
        pub = PUBLISHED_PARAMS.get(name)
        out[name] = {"params": n, "params_m": round(n / 1e6, 1)}
        if pub is not None:
            out[name].update({"published": pub,
                              "matches_published": abs(n - pub) <= PARAM_TOLERANCE * pub})
    return out


def _random_complete(root: Path) -> dict[str, Any] | None:
    marker = root / RANDOM_MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if info.get("format") != RANDOM_FORMAT:
        return None
    need = [root / RANDOM_PARTS[k] / f for k in ("base", "inpaint")
            for f in ("unet/config.json", "vae/config.json", "text_encoder/config.json",
                      "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json",
                      "model_index.json")]
    need.append(root / RANDOM_PARTS["controlnet"] / "config.json")
    return info if all(p.is_file() for p in need) else None


def _model_index(folder: Path, pipeline: str) -> None:
    kinds = {"unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"]}
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline, **kinds},
                                                        indent=2))


def write_random_sd21(root: Path = DEFAULT_RANDOM_DIR,
                      log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """SD 2.1-base's architecture with random weights in diffusers' layout under ``root``:
    ``sd21-base/`` (unet, vae, text_encoder, tokenizer, scheduler), ``controlnet/`` and
    ``sd2-inpaint/`` (9-channel UNet; the other parts link to sd21-base's). Weights float16 on
    disk (the loaders cast to the run's dtype). Reused when ``random_weights.json`` says a
    complete set is there; returns that file's content (folders, parameter counts)."""
    import torch
    from diffusers import PNDMScheduler
    from diffusers.utils import logging as dlog

    info = _random_complete(root)
    if info is not None:
        log(f"random weights: reusing {root}")
        return info
    t0 = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    (root / RANDOM_MARKER).unlink(missing_ok=True)
    for sub in RANDOM_PARTS.values():
        shutil.rmtree(root / sub, ignore_errors=True)
    base, control, inpaint = (root / RANDOM_PARTS[k] for k in ("base", "controlnet", "inpaint"))
    counts: dict[str, int] = {}

    def save(model: Any, folder: Path, name: str) -> None:
        counts[name] = count_params(model)
        level = dlog.get_verbosity()
        dlog.set_verbosity_error()  # not "modules that should be kept in float32: []"
        try:
            model.to(torch.float16).save_pretrained(folder)
        finally:
            dlog.set_verbosity(level)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        log("random weights: building the UNet and its ControlNet")
        unet = build_sd21("unet")
        net = build_sd21("controlnet", unet=unet)
        save(net, control, "controlnet")
        del net
        save(unet, base / "unet", "unet")
        del unet
        gc.collect()
        log("random weights: building the VAE and the text encoder")
        vae = build_sd21("vae")
        save(vae, base / "vae", "vae")
        del vae
        text = build_sd21("text_encoder")
        save(text, base / "text_encoder", "text_encoder")
        del text
        gc.collect()
        write_clip_tokenizer(base / "tokenizer")
        PNDMScheduler(**SD21_SCHEDULE).save_pretrained(base / "scheduler")
        sched = base / "scheduler" / "scheduler_config.json"
        sched.write_text(json.dumps({**json.loads(sched.read_text()), "clip_sample": False},
                                    indent=2))
        _model_index(base, "StableDiffusionPipeline")
        log("random weights: building the inpainting UNet")
        unet9 = build_sd21("inpaint_unet")
        save(unet9, inpaint / "unet", "inpaint_unet")
        del unet9
        gc.collect()
    for sub in ("vae", "text_encoder", "tokenizer", "scheduler"):  # shared, as in SD 2
        (inpaint / sub).symlink_to(Path("..") / base.name / sub, target_is_directory=True)
    _model_index(inpaint, "StableDiffusionInpaintPipeline")
    info = {"format": RANDOM_FORMAT, "note": RANDOM_NOTE, "base": str(base),
            "controlnet": str(control), "inpaint": str(inpaint), "params": counts,
            "disk_gb": folder_gb(root), "dtype_on_disk": "float16", "seed": 0,
            "build_s": round(time.monotonic() - t0, 1)}
    (root / RANDOM_MARKER).write_text(json.dumps(info, indent=2))
    log(f"random weights: wrote {root} ({info['disk_gb']} GB, {info['build_s']} s)")
    return info


def folder_gb(path: Path) -> float:
    """Size of the files under ``path`` in GB (symlinks neither followed nor counted)."""
    total = 0
    for top, _, files in os.walk(path):
        for f in files:
            p = Path(top) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return round(total / 1e9, 2)


# -- arguments ----------------------------------------------------------------------------------

def parse_steps(spec: str | Sequence[int]) -> tuple[int, ...]:
    """``--steps``: comma-separated denoising step counts, each 1..1000."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        steps = tuple(dict.fromkeys(int(str(s).strip()) for s in items if str(s).strip()))
    except ValueError:
        steps = ()
    if not steps or any(not 1 <= s <= 1000 for s in steps):
        raise DiscoverError(f"--steps takes comma-separated denoising step counts from 1 to "
                            f"1000, e.g. 8,50 (got {spec if isinstance(spec, str) else items!r})")
    return steps


def parse_composers(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``--composers``: comma-separated composer names (sink.composer.type)."""
    from discover.sink.composers import COMPOSERS

    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = tuple(dict.fromkeys(c.strip() for c in items if c.strip()))
    known = COMPOSERS.keys()
    bad = [c for c in names if c not in known]
    if not names or bad:
        raise DiscoverError(f"--composers takes a comma-separated list of "
                            f"{', '.join(known)} (got {', '.join(bad) or 'nothing'})")
    return names


def is_sd(composer: str) -> bool:
    """Whether the composer denoises with Stable Diffusion (runs once per step count)."""
    from discover.sink.composers import COMPOSERS
    from discover.sink.composers.sd_sampler import StableDiffusionComposer

    return issubclass(COMPOSERS.get(composer), StableDiffusionComposer)


def square_frames(frames: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Center crop to a square, resize to ``size`` x ``size``."""
    out = []
    for f in frames:
        h, w = f.shape[:2]
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        crop = f[y0:y0 + s, x0:x0 + s]
        interp = cv2.INTER_AREA if s > size else cv2.INTER_CUBIC
        out.append(np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=interp)))
    return out


# -- device -------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: Any) -> dict[str, Any]:
    """What the timings were taken on: GPU name and memory, or CPU model and torch threads."""
    import torch

    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": torch.cuda.get_device_name(device),
                "memory_gb": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
                "cpu": cpu_model(), "cpu_count": os.cpu_count()}
    return {"type": "cpu", "name": cpu_model(), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine()}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "diffusers", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


# -- one configuration --------------------------------------------------------------------------

def _median(xs: Sequence[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(x, nd)


class _Meter:
    """Per-frame timings of a sink camera's decode, compose and denoising loop, and its UNet /
    ControlNet calls: the sink's own stage times (``FrameReport.stages``), the SD composer's
    ``last_sample`` and forward hooks on its networks. Index 0 is the warm-up frame."""

    def __init__(self, pipe: Any, cam: Any) -> None:
        self.decode: list[float] = []
        self.compose: list[float] = []
        self.sample: list[float] = []
        self.unet: list[int] = []
        self.controlnet: list[int] = []
        self.finite = True
        self._cur = {"unet": 0, "controlnet": 0}
        self._hooks: list[Any] = []
        self._pipe, self._composer = pipe, cam.composer
        pipe.listeners.append(self._on_frame)
        parts = getattr(self._composer, "parts", None)
        if parts is not None:
            self._hooks.append(parts.unet.register_forward_hook(self._counter("unet")))
            net = getattr(self._composer, "controlnet", None)
            if net is not None:
                self._hooks.append(net.register_forward_hook(self._counter("controlnet")))

    def _on_frame(self, report: Any) -> None:
        self.decode.append(report.stages["decode"])
        self.compose.append(report.stages["compose"])
        last = getattr(self._composer, "last_sample", None)
        if last is not None:
            self.sample.append(last.get("seconds", 0.0))
            self.finite = self.finite and last.get("finite", True)
        self.unet.append(self._cur["unet"])
        self.controlnet.append(self._cur["controlnet"])
        self._cur.update(unet=0, controlnet=0)

    def _counter(self, key: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self._cur[key] += 1
        return hook

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._pipe.listeners.remove(self._on_frame)


def composer_config(composer: str, steps: int | None, weights: dict[str, Any], device: str,
                    dtype: str) -> dict[str, Any]:
    """The sink's composer config: Stable Diffusion ones (``steps`` set) on the bench's weights,
    device and dtype, everything else at the composer's defaults."""
    cfg: dict[str, Any] = {"type": composer}
    if steps is not None:
        cfg.update({"steps": steps, "device": device, "dtype": dtype})
        if composer == "sd-inpaint":
            cfg["base"] = weights["inpaint"] or weights["base"]
        else:
            cfg["base"] = weights["base"]
        if composer == "diffusion":
            cfg["controlnet"] = weights["controlnet"]
    return cfg


def _open_sink(ccfg: dict[str, Any], meta: Any,
               on_frame: Callable[[str, int, np.ndarray], None]) -> tuple[Any, Any]:
    """A sink worker for the bench camera with composer ``ccfg`` (it takes rest where the
    composer needs it), fed the meta: (pipeline, its camera)."""
    from discover.sdk.topics import topic
    from discover.sink.config import SinkSection
    from discover.sink.pipeline import SinkPipeline

    section = SinkSection.model_validate({
        "tasks": list(meta.tasks), "composer": ccfg, "output": "none",
        "publish_results": False})
    pipe = SinkPipeline(section, CAMERA_PREFIX, on_frame=on_frame)
    pipe.feed(topic(CAMERA_PREFIX, meta.camera, "meta"), meta.to_json())
    # the camera's codec and composer, made now so that a meter can hook them before frame 0
    cam = pipe.camera(meta.camera)
    if cam is None:
        raise DiscoverError(f"bench diffusion: the sink refused the stream ({pipe.refused})")
    return pipe, cam


def _time_frames(label: str, pipe: Any, messages: list[list[tuple[str, bytes]]],
                 sync: Callable[[], None], max_seconds: float | None, estimate: float | None,
                 prog: Progress) -> tuple[float | None, list[float], str | None]:
    """Feed the frames one by one: (warm-up seconds, seconds of each later frame, why it
    stopped early or None). A frame that would end past ``max_seconds`` is not started."""
    times: list[float] = []
    warm: float | None = None
    start = time.perf_counter()
    for i, msgs in enumerate(messages):
        nxt = (times[-1] if times else warm) if i else estimate
        spent = time.perf_counter() - start
        if max_seconds is not None and nxt is not None and spent + nxt > max_seconds:
            return warm, times, (f"stopped before frame {i} of {len(messages)}: {spent:.0f} s "
                                 f"spent, the next frame would take ~{nxt:.0f} s, "
                                 f"--max-seconds {max_seconds:g}")
        what = "warm-up" if i == 0 else f"frame {i}/{len(messages) - 1}"
        eta = f" (~{nxt:.0f} s)" if nxt and nxt >= 1 else ""
        prog.update(f"{label}: {what}{eta}", force=True)
        t = time.perf_counter()
        for tp, payload in msgs:
            pipe.feed(tp, payload)
        got = pipe.process_ready()
        sync()
        dt = time.perf_counter() - t
        if got != 1:
            raise RuntimeError(f"{label}: the sink delivered {got} frames for frame {i}")
        if i == 0:
            warm = dt
        else:
            times.append(dt)
    return warm, times, None


def _sd_figures(composer: Any, meter: _Meter, sl: slice, ccfg: dict[str, Any]) -> dict[str, Any]:
    """A Stable Diffusion composer's denoising figures over the frames ``sl`` and its
    settings."""
    c, parts = composer.config, composer.parts
    unet = meter.unet[sl]
    denoise = _median(meter.sample[sl])
    calls = _median(unet) or 0
    calls = int(calls) if float(calls).is_integer() else calls
    res = {
        "denoise_s": _r(denoise), "denoising_steps": calls,
        "s_per_step": _r(denoise / calls if denoise is not None and calls else None),
        "unet_calls_per_frame": unet, "controlnet_calls_per_frame": meter.controlnet[sl],
        "unet_batch": 2 if composer.guided else 1,
        "guidance_scale": c.guidance_scale, "strength": c.strength,
        "scheduler": c.scheduler, "base": c.base,
        "latents_finite": meter.finite,
        "device": str(parts.device), "dtype": str(parts.dtype).replace("torch.", "")}
    if ccfg["type"] == "diffusion":
        res["controlnet"] = c.controlnet
        res["blend"] = c.blend
    if parts.device.type == "cuda":
        import torch

        res["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return res


def run_config(label: str, ccfg: dict[str, Any], meta: Any,
               messages: list[list[tuple[str, bytes]]], *, max_seconds: float | None,
               estimate: float | None, prog: Progress) -> tuple[dict[str, Any], Any, Any]:
    """One composer configuration through a sink worker: (result, last composed frame or None,
    the preloaded composer, whose models stay cached until sink.composers.sd_loading's
    clear_model_cache)."""
    import torch

    from discover.sink.composers import COMPOSERS

    t0 = time.perf_counter()
    composer = COMPOSERS.create(ccfg)  # loads (and caches) the models: outside the clock
    load_s = time.perf_counter() - t0
    parts = getattr(composer, "parts", None)
    cuda = parts is not None and parts.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    last: list[Any] = [None, None]

    def on_frame(cam: str, index: int, image: np.ndarray) -> None:
        last[0], last[1] = index, image

    pipe, cam = _open_sink(ccfg, meta, on_frame)
    meter = _Meter(pipe, cam)
    res: dict[str, Any] = {"config": label, "composer": ccfg["type"],
                           "steps": ccfg.get("steps"), "load_s": round(load_s, 2)}
    try:
        warm, times, stopped = _time_frames(label, pipe, messages,
                                            torch.cuda.synchronize if cuda else lambda: None,
                                            max_seconds, estimate, prog)
    finally:
        meter.close()
        pipe.close()
    res["warmup_s"] = _r(warm)
    if stopped:
        res["stopped_early"] = stopped
        prog.update(f"{label}: {stopped}", force=True)
    if warm is None:
        res.update({"skipped": stopped, "estimated_s_per_frame": _r(estimate),
                    "frames_timed": 0, "s_per_frame": None, "fps": None})
        return res, None, composer
    sl = slice(1, None) if times else slice(0, 1)  # the timed frames, else the warm-up
    per_frame = times or [warm]
    s_frame = _median(per_frame)
    res.update({"frames_timed": len(times), "from_warmup": not times,
                "s_per_frame": _r(s_frame), "fps": _r(1 / s_frame if s_frame else None),
                "decode_s": _r(_median(meter.decode[sl])),
                "compose_s": _r(_median(meter.compose[sl])), "per_frame_s": [
                    _r(x) for x in per_frame]})
    if parts is not None:
        res.update(_sd_figures(composer, meter, sl, ccfg))
    return res, last[1], composer


def _estimate(prev: dict[str, Any] | None, c: Any, steps: int) -> float | None:
    """Seconds a frame at ``steps`` should take (composer config ``c``), from the same
    composer's previous step count: its time outside the denoising loop plus its seconds per
    step times the steps to run."""
    if not prev or not prev.get("s_per_step") or prev.get("s_per_frame") is None:
        return None
    run = max(1, min(steps, round(steps * c.strength)))
    return prev["s_per_frame"] - prev["denoise_s"] + prev["s_per_step"] * run


# -- run ----------------------------------------------------------------------------------------

def _check_args(frames: int, size: int, max_seconds: float | None, device: str,
                dtype: str) -> None:
    """One error line for a bad number or choice."""
    if frames < 2:
        raise DiscoverError(f"--frames must be at least 2: the first is the warm-up (got {frames})")
    if size < 64 or size % 16:
        raise DiscoverError(f"--size must be a multiple of 16 from 64 on (got {size})")
    if max_seconds is not None and max_seconds <= 0:
        raise DiscoverError(f"--max-seconds must be above 0 (got {max_seconds:g})")
    if device not in ("auto", "cpu", "cuda"):
        raise DiscoverError(f"--device takes auto, cpu or cuda (got {device})")
    if dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise DiscoverError(f"--dtype takes auto, float32, float16 or bfloat16 (got {dtype})")


def _check_weights(sd_names: Sequence[str], random: bool, folders: dict[str, Any]) -> None:
    """One error line unless the SD composers have their weights: --random-weights or
    existing --base (--controlnet, --inpaint) folders, not both."""
    if random and any(folders.values()):
        raise DiscoverError("bench diffusion takes --random-weights or --base/--controlnet/"
                            "--inpaint, not both")
    if sd_names and not random and not folders["base"]:
        raise DiscoverError(f"bench diffusion: composers {', '.join(sd_names)} need Stable "
                            "Diffusion weights: --base DIR (SD 2.1-base in diffusers layout; "
                            "with --controlnet DIR for 'diffusion', --inpaint DIR for "
                            "'sd-inpaint'), or --random-weights [DIR] to time SD 2.1-base's "
                            "architecture with random weights")
    for name, path in folders.items():
        if path is not None and not Path(path).expanduser().is_dir():
            raise DiscoverError(f"bench diffusion: --{name} {path} is not a folder; it must be "
                                "a model folder in diffusers' save_pretrained layout")


def _sd_device(device: str, dtype: str) -> tuple[Any, dict[str, Any], str, str]:
    """Where Stable Diffusion runs: (torch device, its description, dtype name, device type)."""
    from discover.sink.composers.sd_loading import import_diffusers, resolve_device, resolve_dtype

    import_diffusers("bench diffusion")
    torch_dev = resolve_device(device, "--")
    dtype = str(resolve_dtype(dtype, torch_dev)).replace("torch.", "")
    return torch_dev, device_info(torch_dev), dtype, torch_dev.type


def _weights(sd_names: Sequence[str], random_weights: Path | None, folders: dict[str, Any],
             prog: Progress) -> tuple[dict[str, Any], dict[str, str]]:
    """The weight folders each SD composer loads (random ones written first where asked), and
    notes on the composers that are skipped or run on a stand-in."""
    random = random_weights is not None
    weights: dict[str, Any] = {"random": random}
    notes: dict[str, str] = {}
    if random and sd_names:
        prog.update(RANDOM_NOTE, force=True)
        rinfo = write_random_sd21(Path(random_weights), lambda s: prog.update(s, force=True))
        weights.update({"folder": str(random_weights), "note": RANDOM_NOTE,
                        "base": rinfo["base"], "controlnet": rinfo["controlnet"],
                        "inpaint": rinfo["inpaint"],
                        "disk_gb": folder_gb(Path(random_weights))})
    elif sd_names:
        weights.update({k: v and str(v) for k, v in folders.items()})
        weights["base"] = str(folders["base"])
    if "diffusion" in sd_names and not weights.get("controlnet"):
        notes["diffusion"] = ("skipped: no --controlnet (the control module, "
                              "discover/train/control.py); --random-weights builds one")
    if "sd-inpaint" in sd_names and not weights.get("inpaint"):
        notes["sd-inpaint"] = (f"on --base {folders['base']}: a text-to-image UNet, the known "
                               "area blended in each step (no --inpaint folder)")
    return weights, notes


Stream = tuple[Any, list[list[tuple[str, bytes]]], int]


def _edge_streams(src: str, frames: int, size: int, quality: int, checkpoint: Path | None,
                  prog: Progress) -> tuple[list[np.ndarray], Any, dict[str, Stream]]:
    """The clip's square frames through the edge (nanodet, learned codec at ``quality``):
    (frames, the edge pipeline, {stream: (meta, packets per frame, bytes)}) for the
    side+task and side+task+rest streams."""
    from discover.bench.ground import load_frames
    from discover.bench.tasks import OursPipeline

    raw, _ = load_frames(src, 0, frames)
    if len(raw) < 2:
        raise DiscoverError(f"{src} has {len(raw)} frame; bench diffusion needs 2 or more")
    imgs = square_frames(raw, size)
    prog.update(f"{len(imgs)} frames of {src}, {size}x{size}; edge: nanodet + learned "
                f"codec q{quality}", force=True)
    codec_cfg = {"type": "learned", "checkpoint": str(checkpoint) if checkpoint else None}
    with tempfile.TemporaryDirectory() as tmp:  # the edge reads a size x size camera
        for i, img in enumerate(imgs):
            cv2.imwrite(str(Path(tmp) / f"{i:06d}.png"), img)
        ours = OursPipeline(tmp, imgs, REST_INTERVAL, codec_cfg)
        streams: dict[str, Stream] = {}
        for stream, mode in (("side+task", "task"), ("side+task+rest", "background")):
            nbytes, _ = ours.run(quality, mode, keep=True)
            assert ours.kept is not None
            streams[stream] = (*ours.kept, nbytes)
    return imgs, ours, streams


def _note_params(name: str, comp: Any, params: dict[str, dict[str, Any]],
                 prog: Progress) -> None:
    """Add the composer's network sizes to ``params``, checked against SD 2.1-base's."""
    p = comp.parts
    ucfg = p.unet.config
    counts = {"unet" if ucfg.in_channels == ucfg.out_channels
              else "inpaint_unet": count_params(p.unet),
              "text_encoder": count_params(p.text_encoder),
              "vae": count_params(p.vae)}
    if getattr(comp, "controlnet", None) is not None:
        counts["controlnet"] = count_params(comp.controlnet)
    checked = check_params(counts)
    checked["inpaint_unet" if "inpaint_unet" in counts else "unet"]["folder"] = p.source
    for k, v in checked.items():
        params.setdefault(k, v)
    prog.update(f"{name} params: " + ", ".join(
        f"{k} {v['params_m']}M" + (f" (published {v['published'] / 1e6:.1f}M)"
                                   if "published" in v else "")
        for k, v in checked.items()), force=True)


class _Runner:
    """Runs every configuration of one composer and collects results, panels and params."""

    def __init__(self, weights: dict[str, Any], device: str, dtype: str,
                 max_seconds: float | None, sd_names: Sequence[str], prog: Progress) -> None:
        self.weights, self.device, self.dtype = weights, device, dtype
        self.max_seconds, self.sd_names, self.prog = max_seconds, sd_names, prog
        self.results: list[dict[str, Any]] = []
        self.panels: list[tuple[str, np.ndarray]] = []
        self.params: dict[str, dict[str, Any]] = {}

    def composer(self, name: str, stream: str, step_counts: Sequence[int],
                 data: Stream) -> None:
        """``name`` on ``stream``, once per step count for a Stable Diffusion composer; each
        count after the first is budgeted from the previous one's seconds per step."""
        from discover.sink.composers import COMPOSERS

        meta, msgs, nbytes = data
        sd = name in self.sd_names
        prev: dict[str, Any] | None = None
        for s in (step_counts if sd else (None,)):
            label = name if s is None else f"{name}@{s}"
            ccfg = composer_config(name, s, self.weights, self.device, self.dtype)
            est = None
            if prev is not None:
                est = _estimate(prev, COMPOSERS.parse_config(ccfg), s or 1)
            res, image, comp = run_config(label, ccfg, meta, msgs, max_seconds=self.max_seconds,
                                          estimate=est, prog=self.prog)
            res.update({"stream": stream, "stream_kbit_per_frame": round(
                nbytes * 8 / 1000 / len(msgs), 2)})
            if prev is None and getattr(comp, "parts", None) is not None:
                _note_params(name, comp, self.params, self.prog)
            del comp
            self.results.append(res)
            if image is not None and (name == "direct" or sd):
                tag = " RANDOM" if self.weights["random"] and sd else ""
                self.panels.append((f"{label}{tag}", image))
            if res.get("s_per_frame") is not None:
                step = f", {res['s_per_step']:.3f} s/step" if res.get("s_per_step") else ""
                self.prog.update(f"{label}: {res['s_per_frame']:.3f} s/frame ({res['fps']:.4g} "
                                 f"frames/s){step}, load {res['load_s']:.1f} s", force=True)
            prev = res

    def free(self, torch_dev: Any) -> None:
        """Drop the cached SD models before the next composer loads its own."""
        from discover.sink.composers.sd_loading import clear_model_cache

        clear_model_cache()
        gc.collect()
        if torch_dev is not None and torch_dev.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def _run_all(names: Sequence[str], step_counts: Sequence[int], streams: dict[str, Stream],
             runner: _Runner, notes: dict[str, str], torch_dev: Any) -> None:
    """Every composer of ``names`` not skipped by a note, on the stream it takes."""
    from discover.sink.composers import COMPOSERS

    for name in names:
        if name in notes and notes[name].startswith("skipped"):
            runner.prog.update(f"{name}: {notes[name]}", force=True)
            continue
        stream = "side+task+rest" if COMPOSERS.get(name).needs_rest else "side+task"
        runner.composer(name, stream, step_counts, streams[stream])
        if name in runner.sd_names:
            runner.free(torch_dev)


def _describe(src: str, imgs: list[np.ndarray], size: int, quality: int, ckpt_hash: str,
              ours: Any) -> dict[str, Any]:
    """The frames, edge and sink of the run, for the result."""
    return {
        "frames": {"source": src, "count": len(imgs), "timed": len(imgs) - 1, "size": size,
                   "crop": "center square, resized"},
        "edge": {"grounder": "nanodet", "codec": "learned", "quality": quality,
                 "checkpoint": ckpt_hash, "codec_device": "cpu",
                 "rest_interval": REST_INTERVAL,
                 "regions_per_frame": [len(r) for r in ours.regions],
                 "task_area_share": round(ours.area_share, 4)},
        "sink": {"pipeline": "discover.sink.pipeline.SinkPipeline: reassembly, codec decompress, "
                             "composer, task model 'regions' (no model), nothing written",
                 "timing": "frame 0 warm-up; s_per_frame: median over frames 1..; models "
                           "loaded before frame 0 (load_s)"}}


def run_bench_diffusion(*, base: str | Path | None = None, controlnet: str | Path | None = None,
                        inpaint: str | Path | None = None, random_weights: Path | None = None,
                        source: str | None = None, frames: int = 3, size: int = 512,
                        composers: str | Sequence[str] = DEFAULT_COMPOSERS,
                        steps: str | Sequence[int] = DEFAULT_STEPS, device: str = "auto",
                        dtype: str = "auto", max_seconds: float | None = None,
                        checkpoint: Path | None = None, quality: int = QUALITY,
                        out: Path = Path("out/bench"), quiet: bool = False) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns what ``<out>/diffusion.json`` holds."""
    from discover.bench.tasks import side_by_side

    t_start = time.monotonic()
    names, step_counts = parse_composers(composers), parse_steps(steps)
    _check_args(frames, size, max_seconds, device, dtype)
    sd_names = [c for c in names if is_sd(c)]
    random = random_weights is not None
    folders = {"base": base, "controlnet": controlnet, "inpaint": inpaint}
    _check_weights(sd_names, random, folders)
    torch_dev, info_dev = None, {}
    if sd_names:
        torch_dev, info_dev, dtype, device = _sd_device(device, dtype)
    prog = Progress("bench diffusion", enabled=not quiet)
    try:
        weights, notes = _weights(sd_names, random_weights, folders, prog)
        src = source or str(SAMPLE_CLIP)
        imgs, ours, streams = _edge_streams(src, frames, size, quality, checkpoint, prog)
        runner = _Runner(weights, device, dtype, max_seconds, sd_names, prog)
        runner.panels.append((f"original #{len(imgs) - 1}", imgs[-1]))
        _run_all(names, step_counts, streams, runner, notes, torch_dev)
        if random and sd_names:
            prog.update(RANDOM_NOTE, force=True)
    finally:
        prog.done()
    out.mkdir(parents=True, exist_ok=True)
    png = out / "diffusion_side_by_side.png"
    side_by_side(runner.panels, png)
    bad = [k for k, v in runner.params.items() if v.get("matches_published") is False]
    if random and bad:
        notes["params"] = f"parameter counts off the published SD 2.1-base ones: {bad}"
    results = runner.results
    result: dict[str, Any] = {
        "benchmark": "bench diffusion",
        "random_weights": random,
        **({"note": RANDOM_NOTE} if random and sd_names else {}),
        "weights": weights, "params": runner.params,
        "device": info_dev or {"type": "cpu", "name": cpu_model(), "cpu_count": os.cpu_count()},
        "dtype": dtype if sd_names else None, "versions": _versions(),
        **_describe(src, imgs, size, quality, ours.agent.codec.checkpoint_hash(), ours),
        "max_seconds": max_seconds,
        "results": results,
        "sink_fps": {r["config"]: r["fps"] for r in results if r.get("fps") is not None},
        "s_per_step": {r["config"]: r["s_per_step"] for r in results if r.get("s_per_step")},
        "notes": notes,
        "side_by_side": str(png),
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    (out / "diffusion.json").write_text(json.dumps(result, indent=2))
    return result
