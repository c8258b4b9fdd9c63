"""discover/train/control.py: the control module's training on tiny models (see
test_composer_diffusion.py for the tiny Stable Diffusion folders).

Checks that only the ControlNet learns (the frozen UNet, VAE and text encoder do not move), that
the noise-prediction loss falls on a fixed batch, and that the command line writes a ControlNet
folder with its training record that the ``diffusion`` composer then loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("compressai")
pytest.importorskip("open_clip", reason="open_clip_torch ships the CLIP BPE vocab")

from discover.sdk.errors import DiscoverError  # noqa: E402
from discover.sink.composers import COMPOSERS  # noqa: E402
from discover.sink.composers.sd_loading import clear_model_cache, load_stable_diffusion  # noqa: E402
from test_composer_diffusion import (  # noqa: E402 - same folder, on sys.path under pytest
    INFO,
    scene,
    tiny_stable_diffusion,
    write_clip_tokenizer,
)

from discover.train.control import ControlTrainer, load_codec, main, new_controlnet  # noqa: E402

pytestmark = pytest.mark.slow


def _codec(folder: Path, head: str) -> Path:
    from discover.sdk.codecs.learned.model import DiscoverCodecModel, ModelConfig

    torch.manual_seed(0)
    m = DiscoverCodecModel(ModelConfig.preset("tiny", head=head)).eval()
    m.update()
    m.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("control")
    sd = tiny_stable_diffusion(root / "sd21", write_clip_tokenizer(root / "tokenizer"))
    images = root / "images"
    images.mkdir()
    for k in range(3):
        cv2.imwrite(str(images / f"frame{k}.png"), np.roll(scene(), 20 * k, axis=1))
    clear_model_cache()
    yield {"sd": sd, "codec": _codec(root / "codec", "sd_latent"),
           "pixels_codec": _codec(root / "codec-px", "pixels"), "images": images}
    clear_model_cache()


def test_loss_falls_on_a_fixed_batch_and_only_the_controlnet_learns(setup):
    parts = load_stable_diffusion(str(setup["sd"]), device="cpu")
    codec, _ = load_codec(setup["codec"], parts.device)
    torch.manual_seed(0)
    net = new_controlnet(parts.unet, 16)
    assert net.config.conditioning_channels == 4
    trainer = ControlTrainer(parts, net, codec, lr=3e-3, seed=0)
    rgb = np.stack([scene()[:64, :64, ::-1], scene()[36:100, 80:144, ::-1]])
    x = torch.from_numpy(rgb.copy()).permute(0, 3, 1, 2).float() / 255
    z0, cond = trainer.target(x), trainer.condition(x)
    assert z0.shape == cond.shape == (2, 4, 8, 8)
    noise, t = trainer.draw(z0)
    frozen = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    frozen_vae = parts.vae.encoder.conv_in.weight.clone()
    with torch.no_grad():
        before = trainer.loss(cond, z0, noise, t).item()
    losses = [trainer.update(trainer.loss(cond, z0, noise, t)) for _ in range(25)]
    with torch.no_grad():
        after = trainer.loss(cond, z0, noise, t).item()
    assert np.isfinite(losses).all() and after < 0.7 * before, (before, after)
    assert all(torch.equal(v, parts.unet.state_dict()[k]) for k, v in frozen.items())
    assert torch.equal(frozen_vae, parts.vae.encoder.conv_in.weight)
    assert not any(p.requires_grad for p in parts.unet.parameters())
    # a random step on fresh masks, noise and timesteps runs too
    assert np.isfinite(trainer.step(x))


def test_command_line_writes_a_controlnet_the_composer_loads(setup, tmp_path, capsys):
    out = tmp_path / "control"
    rc = main(["--base", str(setup["sd"]), "--codec", str(setup["codec"]), "--out", str(out),
               "--no-video", "--images", str(setup["images"]), "--no-skimage", "--steps", "3",
               "--batch", "1", "--crop", "64", "--embedding-channels", "16", "--lr", "1e-4",
               "--device", "cpu", "--log-every", "1", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["folder"] == str(out)
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 3 and record["frozen"] == ["unet", "vae", "text_encoder", "codec"]
    assert "never read for training" in record["held_out"] and record["seconds"] >= 0
    assert record["data"]["sources"][0]["path"] == str(setup["images"])
    assert "control step 3/3 loss" in cap.err
    assert (out / "config.json").is_file()
    comp = COMPOSERS.create({"type": "diffusion", "base": str(setup["sd"]),
                             "controlnet": str(out), "device": "cpu", "steps": 2})
    z = comp.encode(scene())[0].numpy()
    frame = comp.compose({"x_hat": np.zeros((100, 150, 3), np.uint8), "sd_latent": z,
                          "region_sd_latents": {}}, INFO)
    assert frame.shape == (100, 150, 3)


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    base = ["--base", str(setup["sd"]), "--out", str(tmp_path / "c"), "--no-video",
            "--images", str(setup["images"]), "--no-skimage", "--device", "cpu", "--steps", "1"]
    assert main([*base, "--codec", str(setup["codec"]), "--crop", "100"]) == 2
    assert "--crop must be a positive multiple of 64" in capsys.readouterr().err
    assert main([*base, "--codec", str(setup["pixels_codec"]), "--crop", "64"]) == 2
    err = capsys.readouterr().err
    assert "'pixels' head" in err and err.count("\n") == 1
    assert main([*base, "--codec", str(setup["codec"]), "--crop", "64",
                 "--dtype", "float16"]) == 2
    assert "only on CUDA" in capsys.readouterr().err
    with pytest.raises(DiscoverError, match="does not exist"):
        load_stable_diffusion(str(tmp_path / "nothing"), device="cpu")
