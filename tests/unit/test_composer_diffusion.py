"""The Stable Diffusion composers (sink/composers/diffusion.py, inpaint.py, sd_*.py) on tiny models.

No hub here (DESIGN §5), so tiny randomly initialised SD parts (UNet, ControlNet, VAE with 4
latent channels and 1/8 scale, CLIP text encoder) are saved to folders in diffusers' layout with
a real CLIP tokenizer (open_clip's BPE vocabulary) and loaded back through the composers' own
loader. Random weights make no pictures, so the tests check behaviour: sizes and types, seeds,
steps, that task regions stay faithful, that the control module's condition reaches the UNet,
and the one-line errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip", reason="open_clip_torch ships the CLIP BPE vocab")

from discover.sdk.errors import DiscoverError  # noqa: E402
from discover.sdk.regions import Region  # noqa: E402
from discover.sink.composers import COMPOSERS  # noqa: E402
from discover.sink.composers.diffusion import DiffusionComposer  # noqa: E402
from discover.sink.composers.sd_loading import (  # noqa: E402
    clear_model_cache,
    load_stable_diffusion,
)
from discover.sink.composers.sd_sampler import prompt_for  # noqa: E402
from fake_sd import tiny_controlnet, tiny_stable_diffusion, write_clip_tokenizer  # noqa: E402

H, W = 100, 150  # neither a multiple of 64 nor of 8
BOX = (32, 16, 96, 80)  # on the codec's 16 px grid: SD latent cells x 4..12, y 2..10
REGIONS = [Region(1, BOX, "person", 0.9, ("detection",))]


# -- tiny models in diffusers' folder layout (tests/fake_sd.py) -------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Folders: ``sd`` (text-to-image), ``inpaint`` (9-channel UNet), ``control``."""
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("sd")
    tok = write_clip_tokenizer(root / "tokenizer")
    sd = tiny_stable_diffusion(root / "sd21", tok)
    inpaint = tiny_stable_diffusion(root / "sd2-inpaint", tok, inpainting=True)
    torch.manual_seed(2)
    unet = UNet2DConditionModel.from_pretrained(sd / "unet")
    tiny_controlnet(unet).save_pretrained(root / "control")
    clear_model_cache()
    yield {"sd": sd, "inpaint": inpaint, "control": root / "control"}
    clear_model_cache()


def diffusion(models: dict[str, Path], **kw) -> DiffusionComposer:
    cfg = {"type": "diffusion", "base": str(models["sd"]), "controlnet": str(models["control"]),
           "device": "cpu", "steps": 2, **kw}
    return COMPOSERS.create(cfg)


def scene() -> np.ndarray:
    """A BGR test frame with structure (gradients, a bright block in the task box)."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 / W, yy * 255 / H, (xx + yy) % 64 * 4], -1)
    img[BOX[1] + 10:BOX[3] - 10, BOX[0] + 10:BOX[2] - 10] = (40, 200, 250)
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def sd_decoded(models) -> dict:
    """What the codec's ``sd_latent`` head gives: a rough full latent (here the frame's latent
    plus noise) and the task region's own latent (here exact), on the 16 px cell grid."""
    comp = diffusion(models)
    z = comp.encode(scene())[0].numpy()
    assert z.shape == (4, -(-H // 8), -(-W // 8))
    rng = np.random.default_rng(0)
    rough = (z + rng.normal(0, 1.0, z.shape)).astype(np.float32)
    return {"x_hat": np.full((H, W, 3), 128, np.uint8), "region_pixels": {}, "background": None,
            "sd_latent": rough, "region_sd_latents": {1: z[:, 2:10, 4:12].copy()},
            "has_rest": False, "errors": {}}


INFO = {"frame": 0, "regions": REGIONS}


def count_calls(module) -> tuple[list[int], object]:  # noqa: ANN001
    calls: list[int] = []
    return calls, module.register_forward_hook(lambda *_: calls.append(1))


# -- tests ------------------------------------------------------------------------------------

def test_real_clip_tokenizer_and_prompt(models):
    parts = load_stable_diffusion(str(models["sd"]), device="cpu")
    ids = parts.tokenizer("a photo of person, car").input_ids
    assert ids == [49406, 320, 1125, 539, 2533, 267, 1615, 49407]  # CLIP's own ids
    assert parts.tokenizer.model_max_length == 77 and parts.latent_multiple == 4
    assert prompt_for("a photo of {labels}", "a photo", ["car", "person", "car"], 8) == \
        "a photo of car, person"
    assert prompt_for("a photo of {labels}", "a photo", [], 8) == "a photo"


def test_output_size_type_and_seed(models, sd_decoded):
    comp = diffusion(models, seed=7)
    assert comp.controlnet is not None
    a = comp.compose(sd_decoded, INFO)
    assert a.shape == (H, W, 3) and a.dtype == np.uint8
    assert np.array_equal(a, comp.compose(sd_decoded, INFO))  # same seed, same frame
    other = diffusion(models, seed=8).compose(sd_decoded, INFO)
    assert not np.array_equal(a, other)
    # the control module's condition reaches the UNet: another condition, another picture
    moved = {**sd_decoded, "sd_latent": sd_decoded["sd_latent"][:, ::-1, ::-1].copy()}
    assert np.abs(comp.compose(moved, INFO).astype(int) - a).mean() > 0.5


def test_blend_keeps_task_regions_faithful(models, sd_decoded):
    comp = diffusion(models, steps=4)
    z = torch.from_numpy(sd_decoded["sd_latent"])[None].clone()
    z[..., 2:10, 4:12] = torch.from_numpy(sd_decoded["region_sd_latents"][1])
    reference = comp.decode(z, H, W)  # the region as the codec decoded it
    x0, y0, x1, y1 = BOX
    inner = (slice(y0 + 8, y1 - 8), slice(x0 + 8, x1 - 8))  # off the VAE's reach across edges

    def region_error(blend: str) -> tuple[float, float]:
        """(pixel MSE inside the box vs the reference, largest latent deviation there)."""
        comp = diffusion(models, steps=4, blend=blend)
        seen = []
        decode = comp.decode
        comp.decode = lambda lat, h, w: seen.append(lat) or decode(lat, h, w)
        out = comp.compose(sd_decoded, INFO)
        dz = (seen[-1][..., 2:10, 4:12] - z[..., 2:10, 4:12]).abs().max().item()
        return float(np.mean((out[inner].astype(float) - reference[inner]) ** 2)), dz

    (none, dz_none), (each, dz_each), (end, dz_end) = (
        region_error("none"), region_error("each_step"), region_error("end"))
    assert dz_each < 1e-5 and dz_end < 1e-5 and dz_none > 0.5  # the region's own latent
    # in pixels the VAE decoder's attention mixes in the rest of the frame, so not exact
    assert each < 0.25 * none and end < 0.25 * none, (each, end, none)


def test_8_and_50_steps_and_schedulers(models, sd_decoded):
    comp = diffusion(models)
    unet, control = comp.parts.unet, comp.controlnet
    for cfg, want in [({"steps": 8}, 8), ({"steps": 50}, 50),
                      ({"steps": 8, "scheduler": "dpm"}, 8),
                      ({"steps": 8, "strength": 0.5}, 4),
                      ({"steps": 8, "guidance_scale": 3.0}, 8)]:  # guidance: batched passes
        calls, hook = count_calls(unet)
        ccalls, chook = count_calls(control)
        try:
            out = diffusion(models, **cfg).compose(sd_decoded, INFO)
        finally:
            hook.remove()
            chook.remove()
        assert len(calls) == want and len(ccalls) == want, cfg
        assert out.shape == (H, W, 3)
    # no control module: SDEdit from the decoded latent (strength < 1), DPM-Solver, blended
    calls, hook = count_calls(unet)
    try:
        plain = diffusion(models, controlnet=None, strength=0.5, steps=8, scheduler="dpm")
        out = plain.compose(sd_decoded, INFO)
    finally:
        hook.remove()
    assert plain.controlnet is None and len(calls) == 4 and out.shape == (H, W, 3)


def test_pixels_head_input_is_vae_encoded(models):
    """A pixels-head checkpoint gives x_hat and region crops: the condition is their VAE
    latent, and with blending the decoded crops come back exactly."""
    frame = scene()
    crop = frame[BOX[1]:BOX[3], BOX[0]:BOX[2]].copy()
    decoded = {"x_hat": np.full((H, W, 3), 90, np.uint8), "region_pixels": {1: crop},
               "has_rest": False, "errors": {}}
    out = diffusion(models).compose(decoded, INFO)
    assert out.shape == (H, W, 3) and np.array_equal(out[16:80, 32:96], crop)
    loose = diffusion(models, blend="none").compose(decoded, INFO)
    assert not np.array_equal(loose[16:80, 32:96], crop)


@pytest.mark.parametrize("kind", ["inpaint", "sd"])
def test_inpaint_keeps_task_pixels(models, sd_decoded, kind):
    """sd-inpaint with an inpainting UNet (9 channels) and with plain SD 2.1 (blended)."""
    comp = COMPOSERS.create({"type": "sd-inpaint", "base": str(models[kind]), "device": "cpu",
                             "steps": 3, "guidance_scale": 2.0})
    assert comp.inpainting_unet == (kind == "inpaint")
    frame = scene()
    crop = frame[BOX[1]:BOX[3], BOX[0]:BOX[2]].copy()
    x_hat = (frame // 4 + 60).astype(np.uint8)  # a rough rebuild outside the task box
    x_hat[BOX[1]:BOX[3], BOX[0]:BOX[2]] = crop
    decoded = {"x_hat": x_hat, "region_pixels": {1: crop}, "has_rest": False, "errors": {}}
    out = comp.compose(decoded, INFO)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert np.array_equal(out[16:80, 32:96], crop)
    assert np.abs(out.astype(int) - x_hat).mean() > 1.0  # the rest was repainted
    assert comp.compose({**decoded, "has_rest": True}, INFO) is x_hat  # complete frame
    # sd_latent head: the task region's latent decoded, kept as it is
    z = torch.from_numpy(sd_decoded["sd_latent"])[None].clone()
    z[..., 2:10, 4:12] = torch.from_numpy(sd_decoded["region_sd_latents"][1])
    ref = comp.decode(z, H, W)
    out = comp.compose(sd_decoded, INFO)
    assert np.array_equal(out[16:80, 32:96], ref[16:80, 32:96])


def test_with_the_learned_codec(models):
    """End to end: the learned codec's sd_latent head (tiny, random) -> diffusion composer."""
    from discover.sdk.codecs import CODECS
    from discover.sdk.codecs.learned.model import DiscoverCodecModel, ModelConfig

    torch.manual_seed(0)
    m = DiscoverCodecModel(ModelConfig.preset("tiny", head="sd_latent")).eval()
    m.update()
    codec = CODECS.create({"type": "learned", "temporal": {"enabled": False}}, model=m)
    coded = codec.compress(scene(), REGIONS, send_rest=False)
    dec = codec.decompress({**coded, "table": REGIONS, "size": (W, H)})
    assert dec["sd_latent"].shape == (4, 13, 19) and dec["region_sd_latents"][1].shape[1:] == (8, 8)
    out = diffusion(models).compose(dec, INFO)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    # a side that did not decode: nothing to compose, the codec's placeholder comes back
    bad = {"x_hat": np.full((H, W, 3), 128, np.uint8), "errors": {-2: "side did not decode"}}
    assert diffusion(models).compose(bad, INFO) is bad["x_hat"]


def test_one_line_errors(models, tmp_path):
    def error(cfg: dict) -> str:
        with pytest.raises(DiscoverError) as e:
            COMPOSERS.create({"device": "cpu", **cfg})
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    missing = tmp_path / "no-sd-here"
    msg = error({"type": "diffusion", "base": str(missing), "controlnet": str(models["control"])})
    assert str(missing) in msg and \
        "huggingface-cli download stabilityai/stable-diffusion-2-1-base" in msg
    msg = error({"type": "sd-inpaint", "base": str(missing)})
    assert "huggingface-cli download stabilityai/stable-diffusion-2-inpainting" in msg
    (tmp_path / "half" / "vae").mkdir(parents=True)
    assert "unet/config.json" in error({"type": "sd-inpaint", "base": str(tmp_path / "half")})
    msg = error({"type": "diffusion", "base": str(models["sd"]),
                 "controlnet": str(tmp_path / "no-control")})
    assert "discover train control" in msg and "no-control" in msg
    assert "controlnet" in error({"type": "diffusion", "base": str(models["sd"])})
    assert "sd-inpaint" in error({"type": "diffusion", "base": str(models["inpaint"]),
                                  "strength": 0.5})
    msg = error({"type": "diffusion", "base": "nobody-here/no-such-model", "strength": 0.5})
    assert "neither a folder here nor in the Hugging Face cache" in msg
    assert "steps" in error({"type": "diffusion", "steps": 0})
    assert "blend" in error({"type": "diffusion", "blend": "sometimes"})


def test_image_controlnet_is_refused(models, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(models["sd"] / "unet")
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8)) \
        .save_pretrained(tmp_path / "canny")
    with pytest.raises(DiscoverError, match="3-channel conditions downsampled 8x"):
        diffusion(models, controlnet=str(tmp_path / "canny"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_float16(models, sd_decoded):
    comp = diffusion(models, device="cuda", steps=8)
    assert comp.parts.dtype == torch.float16
    out = comp.compose(sd_decoded, INFO)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
