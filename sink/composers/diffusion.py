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

The text prompt names the labels present (``prompt`` template). A ControlNet here conditions on
the 4-channel SD latent (sd_tensors.py says its scale) directly, so its conditioning embedding
does not downsample (``conditioning_embedding_out_channels`` of length 1). The denoising loop
shared with ``sd-inpaint`` is sd_sampler.py, the model loaders sd_loading.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from discover.sdk.errors import DiscoverError
from discover.sdk.regions import paste_regions
from discover.sink.composers.base import COMPOSERS
from discover.sink.composers.sd_loading import load_controlnet
from discover.sink.composers.sd_sampler import (
    SIDE_ERROR,
    StableDiffusionComposer,
    StableDiffusionConfig,
    frame_size,
)
from discover.sink.composers.sd_tensors import VAE_STRIDE, box_cells, codec_latents, pad_latent
from pydantic import Field

if TYPE_CHECKING:
    import torch


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
        regions = info.get("regions") or []
        frame = np.array(decoded["x_hat"], dtype=np.uint8, copy=True)
        pixels = decoded.get("region_pixels") or {}
        crops = {rid: pixels[rid] for rid in paste_regions(frame, regions, pixels)}
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
            paste_regions(out, info.get("regions") or [], crops)
        return out
