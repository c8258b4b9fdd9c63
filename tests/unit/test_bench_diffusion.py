"""``discover bench diffusion`` (discover/bench/diffusion.py) on tiny Stable Diffusion models.

The bench's own code runs as it does on SD 2.1: the edge pipeline codes the sample clip, a sink
worker decodes and composes it for each composer and step count, the JSON and the side-by-side
picture are written. Models are tiny (tests/fake_sd.py); the ``--random-weights`` path writes
them through the same folder writer with the full-size builder swapped for the tiny one, and
SD 2.1-base's real architecture is checked on torch's meta device (shapes, no memory).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("open_clip", reason="open_clip_torch ships the CLIP BPE vocab")

import fake_sd  # noqa: E402
from discover.sdk.errors import DiscoverError  # noqa: E402
from discover.sink.composers.sd_loading import clear_model_cache  # noqa: E402

from discover.bench import diffusion as bd  # noqa: E402
from discover.cli import main as cli_main  # noqa: E402

SIZE = 128


def tiny_build(part: str, device: str = "cpu", unet=None):  # noqa: ANN001, ANN201
    """bench_diffusion.build_sd21 with the tiny models of tests/fake_sd.py."""
    if part in ("unet", "inpaint_unet"):
        return fake_sd.tiny_unet(9 if part == "inpaint_unet" else 4)
    if part == "vae":
        return fake_sd.tiny_vae()
    if part == "text_encoder":
        return fake_sd.tiny_text_encoder()
    return fake_sd.tiny_controlnet(unet if unet is not None else fake_sd.tiny_unet())


@pytest.fixture(autouse=True)
def _fresh_models():
    clear_model_cache()
    yield
    clear_model_cache()


def steps_run(steps: int, strength: float) -> int:
    """UNet calls per frame of the composers' sampler at ``steps`` and ``strength``."""
    return max(1, min(steps, round(steps * strength)))


def test_random_weights_bench_through_the_cli(tmp_path, monkeypatch, capsys):
    """--random-weights DIR (tiny builder), 2 frames, steps 2 and 3, every composer: one JSON
    line, every configuration timed, UNet / ControlNet calls per frame as the steps say, the
    JSON file and the side-by-side picture written; a second run reuses the weights."""
    monkeypatch.setattr(bd, "build_sd21", tiny_build)
    weights, out = tmp_path / "sd-random", tmp_path / "out"
    argv = ["bench", "diffusion", "--random-weights", str(weights), "--frames", "2",
            "--size", str(SIZE), "--steps", "2,3", "--device", "cpu", "--out", str(out),
            "--json", "-q"]
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["random_weights"] is True and "RANDOM WEIGHTS" in res["note"]
    assert res["weights"]["note"] == res["note"]
    assert json.loads((out / "diffusion.json").read_text())["results"] == res["results"]

    by = {r["config"]: r for r in res["results"]}
    assert list(by) == ["direct", "background", "diffusion@2", "diffusion@3", "sd-inpaint@2",
                        "sd-inpaint@3"]
    for r in by.values():
        assert r["frames_timed"] == 1 and not r["from_warmup"] and "stopped_early" not in r
        assert r["s_per_frame"] > 0 and r["fps"] > 0 and r["compose_s"] >= 0
        assert r["decode_s"] > 0 and r["load_s"] >= 0 and r["warmup_s"] > 0
        assert r["s_per_frame"] >= r["decode_s"] + r["compose_s"] - 1e-5
    assert by["background"]["stream"] == "side+task+rest"
    assert by["direct"]["stream"] == by["diffusion@2"]["stream"] == "side+task"
    for s in (2, 3):
        d = by[f"diffusion@{s}"]
        assert d["steps"] == s and d["denoising_steps"] == s
        assert d["unet_calls_per_frame"] == [s] and d["controlnet_calls_per_frame"] == [s]
        assert d["s_per_step"] > 0 and 0 < d["denoise_s"] <= d["compose_s"]
        assert d["unet_batch"] == 1 and d["latents_finite"] and d["dtype"] == "float32"
        i = by[f"sd-inpaint@{s}"]
        want = steps_run(s, i["strength"])
        assert i["denoising_steps"] == want and i["unet_calls_per_frame"] == [want]
        assert i["controlnet_calls_per_frame"] == [0] and i["unet_batch"] == 2  # guidance 5
        assert i["base"] == res["weights"]["inpaint"]
    assert res["params"]["inpaint_unet"]["params"] == fake_sd.tiny_unet(9).num_parameters()
    assert res["params"]["unet"]["matches_published"] is False  # tiny, not SD 2.1
    assert res["device"]["type"] == "cpu" and res["device"]["threads"] >= 1
    assert res["dtype"] == "float32" and res["versions"]["diffusers"]
    assert set(res["sink_fps"]) == set(by) and set(res["s_per_step"]) == set(by) - {
        "direct", "background"}

    img = cv2.imread(res["side_by_side"])
    # original, direct and the four SD configurations, each under a 28 px label strip
    assert img.shape == (SIZE + 28, 6 * SIZE, 3)

    info = json.loads((weights / bd.RANDOM_MARKER).read_text())
    assert (weights / "sd2-inpaint" / "vae").is_symlink()
    monkeypatch.setattr(bd, "build_sd21", None)  # a rebuild would fail
    assert bd.write_random_sd21(weights) == info


def test_explicit_folders_and_the_time_budget(tmp_path, monkeypatch):
    """--base / --controlnet folders; a budget too small for a second frame keeps the warm-up
    (flagged), and the next step count, estimated from it, is skipped; both say so."""
    monkeypatch.setattr(bd, "build_sd21", tiny_build)
    info = bd.write_random_sd21(tmp_path / "w")
    res = bd.run_bench_diffusion(base=info["base"], controlnet=info["controlnet"], frames=2,
                                 size=64, composers="diffusion,sd-inpaint", steps=(2, 3),
                                 device="cpu", max_seconds=1e-6, out=tmp_path / "out",
                                 quiet=True)
    assert res["random_weights"] is False and "note" not in res
    first, second, inpaint = res["results"][0], res["results"][1], res["results"][2]
    assert first["config"] == "diffusion@2" and first["from_warmup"] is True
    assert first["frames_timed"] == 0 and first["s_per_frame"] == first["warmup_s"] > 0
    assert "stopped before frame 1" in first["stopped_early"]
    assert second["config"] == "diffusion@3" and second["s_per_frame"] is None
    assert "stopped before frame 0" in second["skipped"]
    assert second["estimated_s_per_frame"] is not None
    assert inpaint["config"] == "sd-inpaint@2" and inpaint["base"] == info["base"]
    assert "blended" in res["notes"]["sd-inpaint"]


def test_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "no-sd-here"
    assert cli_main(["bench", "diffusion", "--base", str(missing), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing) in err and err.startswith("error:")

    def error(**kw) -> str:
        with pytest.raises(DiscoverError) as e:
            bd.run_bench_diffusion(out=tmp_path, quiet=True, **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "--random-weights" in error()  # SD composers, no weights
    assert "--steps" in error(random_weights=tmp_path, steps="8,fifty")
    assert "--steps" in error(random_weights=tmp_path, steps="0")
    assert "--composers" in error(random_weights=tmp_path, composers="direct,magic")
    assert "--frames" in error(random_weights=tmp_path, frames=1)
    assert "--size" in error(random_weights=tmp_path, size=100)
    assert "not both" in error(random_weights=tmp_path, base=str(tmp_path))
    assert "controlnet" in error(base=str(tmp_path), controlnet=str(missing))
    if not torch.cuda.is_available():
        assert "--device" in error(random_weights=tmp_path, device="cuda")
    assert not (tmp_path / bd.RANDOM_MARKER).exists()  # nothing built before the checks


def test_sd21_architecture_on_meta():
    """The random-weights builder makes SD 2.1-base's architecture: its configs, and parameter
    counts on the meta device (no memory) equal to the published ones."""
    parts = {p: bd.build_sd21(p, "meta") for p in ("unet", "vae", "text_encoder",
                                                   "inpaint_unet")}
    parts["controlnet"] = bd.build_sd21("controlnet", "meta", unet=parts["unet"])
    assert all(next(m.parameters()).is_meta for m in parts.values())
    u = parts["unet"].config
    assert tuple(u.block_out_channels) == (320, 640, 1280, 1280) and u.layers_per_block == 2
    assert tuple(u.attention_head_dim) == (5, 10, 20, 20) and u.cross_attention_dim == 1024
    assert u.use_linear_projection and u.sample_size == 64 and u.in_channels == 4
    assert tuple(u.down_block_types) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert tuple(u.up_block_types) == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert parts["inpaint_unet"].config.in_channels == 9
    v = parts["vae"].config
    assert tuple(v.block_out_channels) == (128, 256, 512, 512) and v.latent_channels == 4
    assert v.scaling_factor == 0.18215
    t = parts["text_encoder"].config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size,
            t.hidden_act, t.max_position_embeddings, t.vocab_size) == (
        1024, 23, 16, 4096, "gelu", 77, 49408)
    c = parts["controlnet"].config
    assert c.conditioning_channels == 4 and tuple(c.conditioning_embedding_out_channels) == (256,)
    assert tuple(c.block_out_channels) == tuple(u.block_out_channels)

    counts = {k: bd.count_params(m) for k, m in parts.items()}
    assert counts["unet"] == 865_910_724 and counts["vae"] == 83_653_863
    assert counts["text_encoder"] == 340_387_840
    assert counts["inpaint_unet"] == counts["unet"] + 5 * 320 * 3 * 3  # 5 more input channels
    checked = bd.check_params(counts)
    assert all(checked[k]["matches_published"] for k in ("unet", "vae", "text_encoder"))
    assert 300e6 < counts["controlnet"] < 400e6  # the UNet's encoder half + zero convs
    s = bd.SD21_SCHEDULE
    assert (s["beta_start"], s["beta_end"], s["beta_schedule"], s["num_train_timesteps"],
            s["prediction_type"]) == (0.00085, 0.012, "scaled_linear", 1000, "epsilon")


def test_square_frames_and_arguments():
    import numpy as np

    img = np.zeros((60, 100, 3), np.uint8)
    img[:, 20:80] = 255  # the center square
    (sq,) = bd.square_frames([img], 64)
    assert sq.shape == (64, 64, 3) and sq.min() == 255
    assert bd.parse_steps("8, 50,8") == (8, 50)
    assert bd.parse_composers("direct,sd-inpaint") == ("direct", "sd-inpaint")
    assert bd.is_sd("diffusion") and bd.is_sd("sd-inpaint") and not bd.is_sd("background")
    assert Path(bd.DEFAULT_RANDOM_DIR) == Path("out/sd21-random")
