"""``sd-inpaint``: training-free composition with public Stable Diffusion weights.

For users who have SD weights but no trained control module (``diffusion`` needs one): the task
regions stay exactly as decoded and SD repaints the area outside them, starting from the decoded
frame (the codec's rough rebuild from M(z), or the last full view) and prompted with the labels
present::

    decoded frame (x_hat with region crops pasted; sd_latent head: VAE-decoded anchor latent)
        |                                   task boxes -> known mask (pixels; latent cells a
        v                                                 box touches count as known)
    VAE encoder -> z_frame --(strength < 1: noised; 1: pure noise)--> z_T
        for t in DDIM / DPM-Solver timesteps:
            inpainting UNet (9 input channels, e.g. stabilityai/stable-diffusion-2-inpainting):
                eps = UNet([z_t, hole mask, VAE(frame with the hole greyed)], t, text)
            text-to-image UNet (4 channels, e.g. SD 2.1-base):
                eps = UNet(z_t, t, text); after the step the known cells are reset to
                z_frame noised to the next timestep (so the hole grows around what is known)
    VAE decoder -> crop -> task-region pixels pasted back exactly -> BGR uint8

A frame whose ``rest`` arrived is complete: it is returned as decoded (no repainting).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from discover.sdk.regions import paste_regions
from discover.sink.composers.base import COMPOSERS
from discover.sink.composers.sd_sampler import (
    SIDE_ERROR,
    StableDiffusionComposer,
    StableDiffusionConfig,
    frame_size,
)
from discover.sink.composers.sd_tensors import VAE_STRIDE, bgr_to_tensor, codec_latents, vae_latent
from pydantic import Field

DEFAULT_INPAINT_BASE = "stabilityai/stable-diffusion-2-inpainting"


class InpaintConfig(StableDiffusionConfig):
    type: Literal["sd-inpaint"] = "sd-inpaint"
    base: str = Field(DEFAULT_INPAINT_BASE, description="Stable Diffusion folder (diffusers "
                      "layout) or HF id: an inpainting model (9-channel UNet) or a plain "
                      "text-to-image one such as SD 2.1-base (then the known area is blended "
                      "in at every step)")
    strength: float = Field(0.75, gt=0, le=1, description="how far the area outside the task "
                            "regions may move from the decoded frame: 1 repaints it from "
                            "noise, lower keeps more of its layout and colours")
    guidance_scale: float = Field(5.0, ge=0, description="classifier-free guidance towards "
                                  "the prompt; 1 or less turns it off (half the UNet work)")


@COMPOSERS.register
class InpaintComposer(StableDiffusionComposer):
    """SD inpainting of the area outside the task regions; see the module docstring."""

    key = "sd-inpaint"
    Config = InpaintConfig
    config: InpaintConfig
    default_base = DEFAULT_INPAINT_BASE

    def __init__(self, config: InpaintConfig) -> None:
        super().__init__(config)
        ucfg = self.parts.unet.config
        #: True for a 9-channel inpainting UNet (latent, hole mask, masked-frame latent)
        self.inpainting_unet = ucfg.in_channels == 2 * ucfg.out_channels + 1

    def frame_and_boxes(self, decoded: dict[str, Any], info: dict[str, Any], height: int,
                        width: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        """The decoded frame (task crops in place) and the pixel boxes of the task regions
        that arrived."""
        boxes = {r.rid: tuple(int(v) for v in r.box) for r in info.get("regions") or []}
        if decoded.get("sd_latent") is not None:
            _, anchor, _, placed = codec_latents(decoded, boxes, self.parts.device,
                                                 self.parts.dtype)
            return self.decode(anchor, height, width), [boxes[rid] for rid in placed]
        frame = np.array(decoded["x_hat"], dtype=np.uint8, copy=True)
        pasted = paste_regions(frame, info.get("regions") or [], decoded.get("region_pixels") or {})
        return frame, [boxes[rid] for rid in pasted]

    def compose(self, decoded: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if decoded.get("sd_latent") is None and (
                SIDE_ERROR in (decoded.get("errors") or {}) or decoded.get("has_rest")):
            return decoded["x_hat"]  # nothing decoded, or a complete frame
        height, width = frame_size(decoded, info)
        frame, kept = self.frame_and_boxes(decoded, info, height, width)
        if decoded.get("has_rest"):
            return frame
        dev, dt = self.parts.device, self.parts.dtype
        px = VAE_STRIDE * self.parts.latent_multiple
        with torch.inference_mode():
            img = bgr_to_tensor(frame, px, dev)
            known = torch.zeros_like(img[:, :1])
            for x0, y0, x1, y1 in kept:
                known[..., y0:y1, x0:x1] = 1.0
            z_frame = vae_latent(self.parts.vae, img)
            known_lat = F.max_pool2d(known, VAE_STRIDE).to(dt)  # cells a task box touches
            hole_lat = 1 - known_lat
            extra = None
            if self.inpainting_unet:  # the hole greyed out, as SD inpainting was trained
                masked = vae_latent(self.parts.vae, img * known + 0.5 * (1 - known))
                extra = torch.cat([hole_lat, masked], dim=1)
                if self.guided:
                    extra = torch.cat([extra] * 2)
        _, emb = self.prompt_states(info)
        unet = self.parts.unet

        def eps_fn(inp: torch.Tensor, t: Any) -> torch.Tensor:
            if extra is not None:
                inp = torch.cat([inp, extra], dim=1)
            return unet(inp, t, encoder_hidden_states=emb, return_dict=False)[0]

        def keep_known(sched: Any, latents: torch.Tensor, nxt: Any) -> torch.Tensor:
            ref = z_frame if nxt is None else self.noised(sched, z_frame, noise, nxt)
            return known_lat * ref + hole_lat * latents

        noise = self.noise(z_frame.shape)
        latents = self.sample(z_frame, noise, eps_fn,
                              None if self.inpainting_unet else keep_known)
        out = self.decode(latents, height, width)
        for x0, y0, x1, y1 in kept:  # the task regions exactly as decoded
            out[y0:y1, x0:x1] = frame[y0:y1, x0:x1]
        return out
