"""The shared base of the Stable Diffusion composers (``diffusion``, ``sd-inpaint``): their
common options, prompts from the region labels, seeded noise, timesteps and the denoising loop.

A composer built on it supplies the UNet call (``eps_fn``) and what to keep after each step
(``after_step``); :meth:`StableDiffusionComposer.sample` runs the scheduler around them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from discover.sdk.codecs.base import SubstreamError
from discover.sdk.errors import DiscoverError
from discover.sink.composers.base import Composer, ComposerConfig
from discover.sink.composers.sd_loading import DEFAULT_BASE, load_stable_diffusion
from discover.sink.composers.sd_tensors import (
    VAE_STRIDE,
    bgr_to_tensor,
    tensor_to_bgr,
    vae_latent,
    vae_pixels,
)
from pydantic import Field

if TYPE_CHECKING:
    import torch

SIDE_ERROR = SubstreamError.SIDE  # decoded["errors"] key of a side that did not decode
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
