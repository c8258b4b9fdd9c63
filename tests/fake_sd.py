"""Tiny randomly initialised Stable Diffusion parts in diffusers' folder layout, for the tests
of the SD composers (sink/composers/diffusion.py, inpaint.py) and their benchmark
(discover/bench/diffusion.py).

No hub here (DESIGN §5): a tiny UNet, ControlNet, VAE (4 latent channels, 1/8 scale) and CLIP
text encoder are saved as ``StableDiffusionPipeline.save_pretrained`` lays them out, with a real
CLIP tokenizer (open_clip's BPE vocabulary; ``discover.bench.diffusion.write_clip_tokenizer``, which
also builds the full-size random SD 2.1-base) and SD 2.1-base's schedule, so they load through
the composers' own loaders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from discover.bench.diffusion import SD21_SCHEDULE, write_clip_tokenizer

__all__ = ["SCHEDULE", "TEXT_DIM", "tiny_controlnet", "tiny_stable_diffusion",
           "tiny_text_encoder", "tiny_unet", "tiny_vae", "write_clip_tokenizer"]

# SD 2.1-base's scheduler_config.json (a PNDM config that the composers read as DDIM / DPM)
SCHEDULE = SD21_SCHEDULE
TEXT_DIM = 32


def tiny_unet(in_channels: int = 4):  # noqa: ANN201 - diffusers.UNet2DConditionModel
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=(2, 4, 4), use_linear_projection=True)


def tiny_controlnet(unet, lively: bool = True):  # noqa: ANN001, ANN201
    """The control module's shape: 4-channel latent condition, no downsampling embedding. The
    zero convolutions start at zero (no effect); ``lively`` gives them small random weights so
    the condition visibly steers the UNet."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(unet, conditioning_channels=4,
                                    conditioning_embedding_out_channels=(16,))
    if lively:
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.startswith(("controlnet_down_blocks", "controlnet_mid_block",
                                    "controlnet_cond_embedding.conv_out")):
                    p.normal_(0, 0.2)
    return net


def tiny_vae():  # noqa: ANN201 - diffusers.AutoencoderKL
    """4 latent channels at 1/8 scale, as SD's VAE."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         block_out_channels=(8, 8, 16, 16), norm_num_groups=8,
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)


def tiny_text_encoder():  # noqa: ANN201 - transformers.CLIPTextModel
    """CLIP's vocabulary and 77 positions, TEXT_DIM wide."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, projection_dim=TEXT_DIM,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0, hidden_act="gelu"))


def tiny_stable_diffusion(folder: Path, tokenizer: Path, inpainting: bool = False) -> Path:
    """unet/, vae/, text_encoder/, tokenizer/, scheduler/ and model_index.json, as
    ``StableDiffusionPipeline.save_pretrained`` lays them out."""
    from diffusers import PNDMScheduler

    torch.manual_seed(1 if inpainting else 0)
    tiny_unet(9 if inpainting else 4).save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    tiny_text_encoder().save_pretrained(folder / "text_encoder")
    shutil.copytree(tokenizer, folder / "tokenizer")
    PNDMScheduler(**SCHEDULE).save_pretrained(folder / "scheduler")
    kinds = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"]}
    pipe = "StableDiffusionInpaintPipeline" if inpainting else "StableDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipe, **kinds}))
    return folder
