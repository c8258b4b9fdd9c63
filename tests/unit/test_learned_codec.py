"""The learned region codec (sdk/codecs/learned) with real rANS on crops of the bundled clip.

Models here are tiny (N=M=16) and random, with the last encoder layers scaled up so the latents
use many symbols and many CDFs; the training test trains one for a few steps."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="torch comes with the 'learned' extra")
pytest.importorskip("compressai", reason="compressai comes with the 'learned' extra")

from discover.sdk.codecs import CODECS  # noqa: E402
from discover.sdk.codecs.learned import checkpoint as ckpt  # noqa: E402
from discover.sdk.codecs.learned.codec import LearnedCodec  # noqa: E402
from discover.sdk.codecs.learned.entropy import (  # noqa: E402
    hyper_parameters,
    hyper_parameters_torch,
    latent_box,
    outside_mask,
)
from discover.sdk.codecs.learned.model import DiscoverCodecModel, ModelConfig, pad_to_grid  # noqa: E402
from discover.sdk.codecs.learned.training import (  # noqa: E402
    TrainConfig,
    initial_steps,
    train_codec,
    train_steps,
)
from discover.sdk.errors import DiscoverError  # noqa: E402
from discover.sdk.regions import Region, pad_and_clip  # noqa: E402

CLIP = Path(__file__).resolve().parents[2] / "sdk" / "assets" / "sample" / "street.mp4"
W, H = 192, 128  # test crops: 12 x 8 latent cells, 3 x 2 hyper cells
ORIGINS = [(440, 120), (200, 180), (560, 200)]  # crop corners (x, y) around pedestrians
BOXES = [(16, 16, 64, 96), (80, 0, 128, 48), (128, 64, 192, 128), (144, 80, 176, 112)]
REGIONS = [Region(i + 1, b, "person", 0.9, ("detection",)) for i, b in enumerate(BOXES)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on busy cores spinning workers cost a lot."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    out = []
    with av.open(str(CLIP)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in (0, 30, 59):
                out.append(f.to_ndarray(format="bgr24"))
            if i >= 59:
                break
    return out


@pytest.fixture(scope="module")
def crops(clip_frames) -> list[np.ndarray]:
    return [np.ascontiguousarray(f[y:y + H, x:x + W])
            for f, (x, y) in zip(clip_frames, ORIGINS, strict=True)]


#: the codec without temporal prediction: every frame codes alone, as model.compress does
INTRA = {"type": "learned", "temporal": {"enabled": False}}


def lively_model(seed: int = 0, **cfg) -> DiscoverCodecModel:
    """A random tiny model whose latents spread over many symbols and scale indexes."""
    torch.manual_seed(seed)
    m = DiscoverCodecModel(ModelConfig.preset("tiny", **cfg)).eval()
    with torch.no_grad():
        m.g_a[-2].weight *= 30
        m.h_a[-1].weight *= 10
        m.h_s[-1].weight *= 30
    m.update()
    return m


@pytest.fixture(scope="module")
def model() -> DiscoverCodecModel:
    return lively_model()


@pytest.fixture(scope="module")
def codec(model) -> LearnedCodec:
    return CODECS.create(INTRA, model=model)


def decode(c: LearnedCodec, coded: dict, *, regions=None, rest=..., side=None, table=REGIONS,
           size=(W, H)) -> dict:
    return c.decompress({
        "side": coded["side"] if side is None else side,
        "regions": coded["regions"] if regions is None else regions,
        "rest": coded["rest"] if rest is ... else rest,
        "table": table, "size": size,
    })


def encoder_view(c: LearnedCodec, img: np.ndarray, regions=REGIONS) -> dict:
    """What the encoder quantised: y_hat (float64 M x h x w) straight from the model, coded as
    the next frame of ``c``'s stream (its bytes are those ``c.compress`` makes next)."""
    boxes = [latent_box(r.box, img.shape[1], img.shape[0]) for r in regions]
    with torch.inference_mode():
        return c.model.compress(c._to_tensor(img), boxes, True, c.rate,
                                seq=c.frames.state.seq + 1)


def crop(img: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


def cells(box) -> tuple[slice, slice, slice]:
    lx0, ly0, lx1, ly1 = latent_box(box, W, H)
    return slice(None), slice(ly0, ly1), slice(lx0, lx1)


# -- round trip -------------------------------------------------------------------------------

def test_round_trip_decodes_exactly_the_encoders_latents(codec, crops):
    for img in crops:
        enc = encoder_view(codec, img)
        # the model is not degenerate: many symbols and many CDFs in use
        assert len(np.unique(np.rint(enc["y_hat"]))) > 8
        assert len(np.unique(enc["indexes"])) > 8
        coded = codec.compress(img, REGIONS, send_rest=True)
        assert set(coded["regions"]) == {r.rid for r in REGIONS}
        assert coded["side"] == enc["side"] and coded["rest"] == enc["rest"]
        out = decode(codec, coded)
        assert out["errors"] == {} and out["has_rest"] is True
        for r in REGIONS:
            assert np.array_equal(out["region_latents"][r.rid], enc["y_hat"][cells(r.box)])
            px = out["region_pixels"][r.rid]
            assert px.shape == crop(img, r.box).shape and px.dtype == np.uint8
        # rest + all regions = the full latent, bit for bit
        assert out["y_received"].all()
        assert np.array_equal(out["y_hat"], enc["y_hat"].astype(np.float32))
        assert out["x_hat"].shape == (H, W, 3) and out["x_hat"].dtype == np.uint8


def test_full_decode_is_g_s_of_the_full_latent_and_m_of_z(codec, crops):
    img = crops[0]
    enc = encoder_view(codec, img)
    out = decode(codec, codec.compress(img, REGIONS, send_rest=True))
    m = codec.model
    with torch.inference_mode():
        z_hat = torch.from_numpy(enc["z_sym"].astype(np.float32))[None] + m.z_medians()[None]
        y = torch.from_numpy(enc["y_hat"].astype(np.float32))[None]
        ref = m.synthesize(y, torch.ones_like(y[:, :1]), m.global_info(z_hat))
    ref_img = codec._to_bgr(ref[..., :H, :W])
    assert np.array_equal(out["background"], ref_img)
    assert np.array_equal(out["x_hat"], ref_img)  # with rest: the full decode, no pasting


def test_rest_carries_exactly_the_cells_outside_the_regions(codec, model, crops):
    img = crops[1]
    enc = encoder_view(codec, img)
    coded = codec.compress(img, REGIONS, send_rest=True)
    fresh = CODECS.create(INTRA, model=model)  # frame 0 of a stream, as both below
    with_rest = fresh.compress(img, REGIONS, send_rest=True)
    only_rest = decode(codec, coded, regions={})
    outside = outside_mask([latent_box(r.box, W, H) for r in REGIONS], (H // 16, W // 16))
    assert 0 < outside.sum() < outside.size
    assert np.array_equal(only_rest["y_received"], outside)
    assert np.array_equal(only_rest["y_hat"][:, outside], enc["y_hat"][:, outside].astype(np.float32))
    assert not only_rest["y_hat"][:, ~outside].any()
    assert only_rest["has_rest"] and only_rest["region_pixels"] == {}
    # without rest nothing outside the regions is decoded, and nothing is sent for it
    no_rest = CODECS.create(INTRA, model=model).compress(img, REGIONS, send_rest=False)
    assert no_rest["rest"] is None
    assert no_rest["regions"] == with_rest["regions"] and no_rest["side"] == with_rest["side"]
    out = decode(codec, no_rest)
    assert not out["has_rest"] and not out["y_received"][outside].any()


def test_region_independence_any_subset(codec, crops):
    img = crops[2]
    coded = codec.compress(img, REGIONS, send_rest=False)
    full = decode(codec, coded)
    rids = [r.rid for r in REGIONS]
    boxes = {r.rid: r.box for r in REGIONS}
    for k in range(len(rids) + 1):
        for subset in itertools.combinations(rids, k):
            out = decode(codec, coded, regions={rid: coded["regions"][rid] for rid in subset})
            assert out["errors"] == {} and set(out["region_pixels"]) == set(subset)
            for rid in subset:
                assert np.array_equal(out["region_latents"][rid], full["region_latents"][rid])
                assert np.array_equal(out["region_pixels"][rid], full["region_pixels"][rid])
                if rid != 3 or 4 not in subset:  # box 4 lies inside box 3 and is pasted later
                    assert np.array_equal(crop(out["x_hat"], boxes[rid]), out["region_pixels"][rid])


def test_region_pixels_depend_on_the_region_itself(codec, crops):
    """Independence is not constant output: other frames give other pixels and latents."""
    a = decode(codec, codec.compress(crops[0], REGIONS, send_rest=False))
    b = decode(codec, codec.compress(crops[1], REGIONS, send_rest=False))
    for r in REGIONS:
        assert not np.array_equal(a["region_latents"][r.rid], b["region_latents"][r.rid])
        assert not np.array_equal(a["region_pixels"][r.rid], b["region_pixels"][r.rid])


# -- bad input --------------------------------------------------------------------------------

DAMAGES = {
    "truncated": lambda b: b[: len(b) // 2],
    "tail cut": lambda b: b[:-3],
    "empty": lambda b: b"",
    "header destroyed": lambda b: b"\x00" * 6 + b[6:],
    "all zeros": lambda b: bytes(len(b)),
    "one bit flipped": lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0x10]) + b[len(b) // 2 + 1:],
    "one byte appended": lambda b: b + b"\x01",
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_bad_region_payload_fails_alone(codec, crops, damage):
    coded = codec.compress(crops[0], REGIONS, send_rest=True)
    full = decode(codec, coded)
    bad = REGIONS[1].rid
    payloads = {**coded["regions"], bad: damage(coded["regions"][bad])}
    out = decode(codec, coded, regions=payloads)
    assert set(out["errors"]) == {bad} and "did not decode" in out["errors"][bad]
    assert bad not in out["region_pixels"] and bad not in out["region_latents"]
    for r in REGIONS:
        if r.rid != bad:
            assert np.array_equal(out["region_latents"][r.rid], full["region_latents"][r.rid])
            assert np.array_equal(out["region_pixels"][r.rid], full["region_pixels"][r.rid])
    assert out["has_rest"] and out["x_hat"].shape == (H, W, 3)


def test_swapped_or_stale_payloads_are_caught(codec, crops):
    coded = codec.compress(crops[0], REGIONS, send_rest=True)
    other = codec.compress(crops[1], REGIONS, send_rest=True)
    r1, r2 = REGIONS[0].rid, REGIONS[1].rid
    swapped = {**coded["regions"], r1: coded["regions"][r2], r2: coded["regions"][r1]}
    assert set(decode(codec, coded, regions=swapped)["errors"]) == {r1, r2}
    # a region payload of another frame (same box) does not decode with this frame's side
    stale = {**coded["regions"], r1: other["regions"][r1]}
    assert set(decode(codec, coded, regions=stale)["errors"]) == {r1}
    # nor does another frame's rest
    out = decode(codec, coded, rest=other["rest"])
    assert set(out["errors"]) == {-1} and out["has_rest"] is False
    assert set(out["region_pixels"]) == {r.rid for r in REGIONS}


def test_bad_side_fails_every_region_without_raising(codec, crops):
    coded = codec.compress(crops[0], REGIONS, send_rest=True)
    for side in (b"", b"garbage", coded["side"][:-4], bytes(len(coded["side"]))):
        out = decode(codec, coded, side=side)
        assert -2 in out["errors"] and all(r.rid in out["errors"] for r in REGIONS)
        assert out["x_hat"].shape == (H, W, 3) and out["region_pixels"] == {}
    # a side made for another frame size
    small = codec.compress(np.ascontiguousarray(crops[0][:64, :64]), [], send_rest=False)
    assert -2 in decode(codec, coded, side=small["side"])["errors"]


def test_region_not_in_table_or_outside_the_frame(codec, crops):
    coded = codec.compress(crops[0], REGIONS, send_rest=False)
    out = decode(codec, coded, regions={**coded["regions"], 99: coded["regions"][1]})
    assert set(out["errors"]) == {99} and set(out["region_pixels"]) == {r.rid for r in REGIONS}
    table = [*REGIONS[:3], Region(4, (100, 100, 300, 140), "person", 0.9)]
    out = decode(codec, coded, table=table)
    assert set(out["errors"]) == {4}
    with pytest.raises(ValueError, match="not inside"):
        codec.compress(crops[0], table, send_rest=False)


@settings(max_examples=8, deadline=None)
@given(st.data())
def test_any_aligned_box_round_trips(codec, crops, data):
    img = crops[1]
    enc_regions = []
    for rid in range(1, data.draw(st.integers(1, 3)) + 1):
        x0, y0 = data.draw(st.integers(0, W - 1)), data.draw(st.integers(0, H - 1))
        x1, y1 = data.draw(st.integers(x0 + 1, W)), data.draw(st.integers(y0 + 1, H))
        box = pad_and_clip((x0, y0, x1, y1), 0.0, W, H, codec.align)
        enc_regions.append(Region(rid, box, "person", 1.0, ("detection",)))
    enc = encoder_view(codec, img, enc_regions)
    out = decode(codec, codec.compress(img, enc_regions, send_rest=False), table=enc_regions)
    assert out["errors"] == {}
    for r in enc_regions:
        assert all(v % 16 == 0 for v in r.box)
        assert out["region_pixels"][r.rid].shape == crop(img, r.box).shape
        assert np.array_equal(out["region_latents"][r.rid], enc["y_hat"][cells(r.box)])


# -- determinism of the probabilities -------------------------------------------------------

def _perturbed(m: DiscoverCodecModel, rel: float, seed: int) -> DiscoverCodecModel:
    """A copy whose float weights all carry relative noise (as another backend would compute);
    its integer coding tables are the checkpoint's."""
    p = copy.deepcopy(m)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in p.parameters():
            t.mul_(1 + rel * (2 * torch.rand(t.shape, generator=g) - 1))
    p._coder = None
    return p


def test_probabilities_survive_float_noise_and_backends(model, clip_frames):
    rng = np.random.default_rng(1)
    noisy = _perturbed(model, 1e-6, seed=2)
    enc_c = CODECS.create(INTRA, model=model)
    dec_c = CODECS.create(INTRA, model=noisy)
    assert dec_c.checkpoint_hash() != enc_c.checkpoint_hash()  # the floats did change
    tables = model.coder().tables.hyper
    for _ in range(24):  # random crops of random frames, random boxes
        f = clip_frames[int(rng.integers(3))]
        y0, x0 = int(rng.integers(0, 576 - H)), int(rng.integers(0, 768 - W))
        img = np.ascontiguousarray(f[y0:y0 + H, x0:x0 + W])
        enc = encoder_view(enc_c, img)
        out = decode(dec_c, enc_c.compress(img, REGIONS, send_rest=True))
        assert out["errors"] == {}
        assert np.array_equal(out["y_hat"], enc["y_hat"].astype(np.float32))
        # an independent implementation (torch float64 convolutions) gives the same bits
        idx_n, mu_n = hyper_parameters(enc["z_sym"], tables)
        idx_t, mu_t = hyper_parameters_torch(enc["z_sym"], tables)
        assert np.array_equal(idx_n, enc["indexes"]) and np.array_equal(idx_t, idx_n)
        assert np.array_equal(mu_t, mu_n)
    if torch.cuda.is_available():  # pragma: no cover - exercised where a GPU is present
        z = rng.integers(-20, 21, size=(16, 4, 4)).astype(np.int32)
        a, b = hyper_parameters(z, tables), hyper_parameters_torch(z, tables, "cuda")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_float_probabilities_would_not_survive_the_same_noise(model):
    """Control for the test above: on many z, compressai's float path (h_s in float32, then
    build_indexes) picks other CDFs under the same 1e-6 noise; the fixed-point path never."""
    noisy = _perturbed(model, 1e-6, seed=2)
    tables = model.coder().tables.hyper
    gc = model.gaussian_conditional
    rng = np.random.default_rng(3)
    flips_float = 0
    for i in range(32):  # ~2M scales; a flip needs a scale within 1e-6 of a table boundary
        z = rng.integers(-30, 31, size=(1, 16, 16, 16)).astype(np.int32)
        zt = torch.from_numpy(z).float() + model.z_medians()[None]
        with torch.no_grad():
            s_a = model.h_s(zt).chunk(2, 1)[0]
            s_b = noisy.h_s(zt).chunk(2, 1)[0]
        flips_float += int((gc.build_indexes(s_a) != gc.build_indexes(s_b)).sum())
        if i < 4:
            idx_a, mu_a = hyper_parameters(z[0], tables)
            idx_b, mu_b = noisy.coder().parameters(z[0])
            idx_c, mu_c = hyper_parameters_torch(z[0], tables)
            assert np.array_equal(idx_a, idx_b) and np.array_equal(mu_a, mu_b)
            assert np.array_equal(idx_a, idx_c) and np.array_equal(mu_a, mu_c)
    assert flips_float > 0


# -- checkpoints ------------------------------------------------------------------------------

def test_checkpoint_round_trip_keeps_outputs_and_hash(model, codec, crops, tmp_path):
    h = model.save_pretrained(tmp_path / "ck", training={"steps": 0, "note": "random"})
    assert h == codec.checkpoint_hash()
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["model"]["N"] == 16 and cfg["training"]["note"] == "random"
    loaded = CODECS.create({**INTRA, "checkpoint": str(tmp_path / "ck")})
    assert loaded.checkpoint_hash() == h
    assert loaded.descriptor()["checkpoint"] == h
    img = crops[0]
    a = CODECS.create(INTRA, model=model).compress(img, REGIONS, True)
    assert a == loaded.compress(img, REGIONS, True)  # identical bitstreams (both frame 0)
    da, db = decode(codec, a), decode(loaded, a)  # and the loaded one decodes the original's
    assert np.array_equal(da["x_hat"], db["x_hat"]) and db["errors"] == {}
    for r in REGIONS:
        assert np.array_equal(da["region_pixels"][r.rid], db["region_pixels"][r.rid])
    # one changed weight changes the hash
    other = DiscoverCodecModel.from_pretrained(tmp_path / "ck")
    with torch.no_grad():
        other.g_s[0].weight[0, 0, 0, 0] += 1e-3
    assert other.save_pretrained(tmp_path / "ck2") != h
    # as does noise on all float weights
    assert ckpt.model_hash(_perturbed(model, 1e-3, 0)) != h


def test_checkpoint_without_safetensors_uses_torch_file(model, tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "_have_safetensors", lambda: False)
    h = model.save_pretrained(tmp_path / "pt")
    assert (tmp_path / "pt" / "model.pt").is_file()
    assert ckpt.load_pretrained(tmp_path / "pt").hash == h


def test_checkpoint_problems_are_one_line_errors(model, tmp_path):
    with pytest.raises(DiscoverError, match=r"checkpoints/no-such-ckpt does not exist; train one "
                                            r"with 'discover train codec --out DIR'"):
        CODECS.create({"type": "learned", "name": "no-such-ckpt"})
    folder = tmp_path / "ck"
    model.save_pretrained(folder)
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(DiscoverError, match="does not match the sha256"):
        ckpt.load_pretrained(folder)
    w.unlink()
    with pytest.raises(DiscoverError, match="weights .* are missing"):
        ckpt.load_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(DiscoverError, match="malformed"):
        ckpt.load_pretrained(folder)
    with pytest.raises(DiscoverError, match="name"):
        CODECS.create({"type": "learned", "name": "../etc"})


def test_codec_config_and_descriptor(codec):
    assert CODECS.get("learned") is LearnedCodec and codec.align == 16
    d = codec.descriptor()
    assert d["type"] == "learned" and d["checkpoint"] == codec.checkpoint_hash()
    assert len(d["checkpoint"]) == 16 and d["config"]["region_context"] == 4
    with pytest.raises(DiscoverError, match="region_context"):
        CODECS.create({"type": "learned", "region_context": -1})


# -- rate points ------------------------------------------------------------------------------

def test_rate_points_share_one_model_and_travel_in_the_side(crops):
    """One checkpoint, three quantisation steps: finer steps cost more bits and decode closer to
    the unquantised latent; the sink reads the rate point from ``side``, so the same decoder
    decodes frames coded at any of them, exactly."""
    m = lively_model(steps=(2.0, 1.0, 0.5))
    assert m.config.rate_points == 3 and m.coder().rate_points == 3
    assert [m.coder().step(k) for k in range(3)] == [2.0, 1.0, 0.5]
    sink = CODECS.create(INTRA, model=m)
    assert sink.rate == 1  # default: the middle rate point
    img = crops[0]
    with torch.inference_mode():
        y = m.g_a(sink._to_tensor(img))[0].double().numpy()
    sizes, errors = [], []
    for q in (1, 2, 3):
        edge = CODECS.create({**INTRA, "quality": q}, model=m)
        coded = edge.compress(img, REGIONS, send_rest=True)
        enc = m.compress(edge._to_tensor(img), [latent_box(r.box, W, H) for r in REGIONS],
                         True, q - 1)
        out = decode(sink, coded)
        assert out["errors"] == {}
        assert np.array_equal(out["y_hat"], enc["y_hat"].astype(np.float32))
        sizes.append(len(coded["side"]) + len(coded["rest"])
                     + sum(len(b) for b in coded["regions"].values()))
        errors.append(float(np.abs(enc["y_hat"] - y).mean()))
    assert sizes[0] < sizes[1] < sizes[2], sizes
    assert errors[0] > errors[1] > errors[2], errors
    with pytest.raises(DiscoverError, match="quality 4 is out of range"):
        CODECS.create({**INTRA, "quality": 4}, model=m)
    # a side naming a rate point the sink's checkpoint lacks fails cleanly
    one = CODECS.create(INTRA, model=lively_model())
    coded = CODECS.create({**INTRA, "quality": 3}, model=m).compress(img, [], True)
    assert -2 in decode(one, coded, regions={}, table=[])["errors"]


def test_initial_steps_follow_the_lambdas():
    steps = initial_steps((0.0009, 0.0035, 0.013))
    assert steps[1] == 1.0 and steps[0] > 1.9 and steps[2] < 0.53


# -- sizes and heads --------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["small", "paper"])
def test_shipped_sizes_build_and_make_exact_tables(size):
    m = DiscoverCodecModel(ModelConfig.preset(size))
    m.update()
    t = m.coder().tables.hyper
    assert len(t.layers) == 3 and t.channels == ModelConfig.preset(size).M
    z = np.random.default_rng(0).integers(-3, 4, size=(m.config.N, 2, 2)).astype(np.int32)
    a, b = hyper_parameters(z, t), hyper_parameters_torch(z, t)
    assert a[0].shape == (m.config.M, 8, 8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_small_model_codes_a_frame(crops):
    torch.manual_seed(0)
    c = CODECS.create(INTRA,
                      model=DiscoverCodecModel(ModelConfig.preset("small")).eval())
    out = decode(c, c.compress(crops[0], REGIONS, send_rest=True))
    assert out["errors"] == {} and out["y_received"].all() and out["x_hat"].shape == (H, W, 3)


def test_sd_latent_head(crops):
    m = lively_model(head="sd_latent")
    x = pad_to_grid(torch.rand(2, 3, 128, 192))
    with torch.no_grad():
        assert m(x)["x_hat"].shape == (2, 4, 16, 24)
    c = CODECS.create(INTRA, model=m)
    out = decode(c, c.compress(crops[0], REGIONS, send_rest=False))
    assert out["sd_latent"].shape == (4, H // 8, W // 8) and out["errors"] == {}
    x0, y0, x1, y1 = REGIONS[0].box
    assert out["region_sd_latents"][1].shape == (4, (y1 - y0) // 8, (x1 - x0) // 8)
    with pytest.raises(DiscoverError, match="Stable Diffusion VAE"):
        train_steps(m, None, stage="I", lambdas=(0.01,), steps=1, batch=1, lr=1e-3)  # type: ignore[arg-type]


# -- training ---------------------------------------------------------------------------------

def test_training_few_steps_lowers_the_loss_and_stage_two_freezes_the_encoder(clip_frames, tmp_path):
    images = [np.ascontiguousarray(f[:, :, ::-1]) for f in clip_frames]
    cfg = TrainConfig(size="tiny", lambdas=(0.01,), stages=("I",), steps_stage1=40, batch=4,
                      crop=64, lr=2e-3, out=tmp_path, save_every=20, log_every=0, seed=0)
    lines: list[str] = []
    res = train_codec(cfg, log=lines.append, images=images,
                         data_record={"sources": ["street.mp4 frames 0, 30, 59"]})
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    assert any("saved" in ln for ln in lines)
    folder = Path(res["folder"])
    rec = json.loads((folder / "config.json").read_text())["training"]
    assert rec["steps"] == 40 and rec["stage"] == "I" and rec["lambdas"] == [0.01]
    assert "frames 500-794 are the evaluation split" in rec["held_out"]
    # stage II from that checkpoint: encoder and hyper path frozen, decoder learns
    before = DiscoverCodecModel.from_pretrained(folder)
    cfg2 = TrainConfig(size="tiny", lambdas=(0.01,), stages=("II",), steps_stage2=6, batch=2,
                       crop=64, lr_stage2=1e-3, out=tmp_path, name="two", init=folder,
                       log_every=0)
    res2 = train_codec(cfg2, log=lines.append, images=images, data_record={})
    after = DiscoverCodecModel.from_pretrained(res2["folder"])
    sb, sa = before.state_dict(), after.state_dict()
    for k in sb:
        if k.split(".")[0] in ("g_a", "h_a", "h_s", "entropy_bottleneck", "hyper_fixed"):
            assert torch.equal(sb[k], sa[k]), k
    assert not torch.equal(sb["g_s.0.weight"], sa["g_s.0.weight"])
    assert any(h["kept"] < 1 for h in res2["history"])  # stage II did mask the latent
    rec2 = json.loads((Path(res2["folder"]) / "config.json").read_text())["training"]
    assert [s["stage"] for s in rec2["stages"]] == ["I", "II"] and rec2["steps"] == 46


def test_rate_points_can_be_added_to_a_trained_checkpoint(clip_frames, tmp_path):
    """Starting three lambdas from a one-point checkpoint keeps its transforms and entropy
    models, gives each lambda its own step, and trains them jointly (each step moves)."""
    images = [np.ascontiguousarray(f[:, :, ::-1]) for f in clip_frames]
    base = lively_model()
    base.save_pretrained(tmp_path / "one")
    cfg = TrainConfig(size="tiny", lambdas=(0.02, 0.005, 0.08), stages=("I",), steps_stage1=5,
                      batch=3, crop=64, lr=1e-3, out=tmp_path, name="three",
                      init=tmp_path / "one", log_every=0)
    res = train_codec(cfg, log=lambda _: None, images=images, data_record={})
    m = DiscoverCodecModel.from_pretrained(res["folder"])
    assert m.config.rate_points == 3 and res["lambdas"] == [0.005, 0.02, 0.08]
    start = initial_steps([0.005, 0.02, 0.08])
    assert m.config.steps == start
    trained = torch.exp(m.log_steps).tolist()
    assert all(abs(a - b) > 1e-5 for a, b in zip(trained, start, strict=True))
    assert trained[0] > trained[1] > trained[2]  # lowest lambda keeps the coarsest step
    rec = json.loads((Path(res["folder"]) / "config.json").read_text())["training"]
    assert [p["quality"] for p in rec["rate_points"]] == [1, 2, 3]


def test_training_never_writes_into_the_shipped_checkpoints(tmp_path):
    from discover.sdk.codecs.learned.checkpoint import CHECKPOINT_ROOT

    shipped = CHECKPOINT_ROOT / "small" / "model.safetensors"
    before = shipped.stat().st_mtime_ns
    for out, name in ((CHECKPOINT_ROOT, "small"), (CHECKPOINT_ROOT / "small", "x")):
        cfg = TrainConfig(size="tiny", lambdas=(0.01,), stages=("I",), steps_stage1=1, batch=1,
                          crop=64, out=out, name=name)
        with pytest.raises(DiscoverError, match="inside the shipped checkpoints.*--out"):
            train_codec(cfg, log=lambda _: None, images=[np.zeros((64, 64, 3), np.uint8)],
                        data_record={})
    assert shipped.stat().st_mtime_ns == before
