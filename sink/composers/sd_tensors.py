"""Tensor helpers of the SD composers: BGR frames <-> RGB tensors, SD VAE latents <-> pixels,
latent padding and cells, and the codec's ``sd_latent`` head output as condition and anchor.

Latents follow the convention of the UNet: the VAE latent *times* the VAE's ``scaling_factor``
(0.18215 for SD 2.1), which is also what the codec's ``sd_latent`` head must be trained to
predict (:func:`vae_latent` gives that target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from discover.sdk.codecs.learned.entropy import LATENT_STRIDE

if TYPE_CHECKING:
    import torch

#: the learned codec's latent cell in pixels: region latents cover their box snapped outwards
#: to this grid
CODEC_CELL = LATENT_STRIDE
VAE_STRIDE = 8


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
