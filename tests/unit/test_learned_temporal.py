"""Temporal coding of the learned codec (sdk/codecs/learned/temporal.py) on consecutive frames
of the bundled clip, with real rANS: exact closed-loop decoding, skip and z reuse on a static
scene, references restricted to what every receiving sink has, late join and loss recovered by
an intra refresh, and the residual model fit."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import av
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch comes with the 'learned' extra")
pytest.importorskip("compressai", reason="compressai comes with the 'learned' extra")

from discover.sdk.codecs import CODECS  # noqa: E402
from discover.sdk.codecs.learned.model import DiscoverCodecModel, ModelConfig  # noqa: E402
from discover.sdk.codecs.learned.temporal import fit_offsets, residual_bits  # noqa: E402
from discover.sdk.regions import Region  # noqa: E402

CLIP = Path(__file__).resolve().parents[2] / "sdk" / "assets" / "sample" / "street.mp4"
W, H = 192, 128
X0, Y0 = 440, 120  # crop corner around walking pedestrians


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    out = []
    with av.open(str(CLIP)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= 12:
                break
            out.append(np.ascontiguousarray(f.to_ndarray(format="bgr24")[Y0:Y0 + H, X0:X0 + W]))
    return out


@pytest.fixture(scope="module")
def model() -> DiscoverCodecModel:
    torch.manual_seed(0)
    m = DiscoverCodecModel(ModelConfig.preset("tiny", steps=(1.0, 0.5))).eval()
    with torch.no_grad():
        m.g_a[-2].weight *= 30
        m.h_a[-1].weight *= 10
        m.h_s[-1].weight *= 30
        m.residual_offsets.fill_(2)
    m.update()
    return m


def regions(shift: int = 0) -> list[Region]:
    """Two detection boxes (one drifting right by ``shift`` px) and one classification box."""
    return [Region(1, (16 + shift, 16, 64 + shift, 96), "person", 0.9, ("detection",)),
            Region(2, (128, 64, 192, 128), "car", 0.8, ("detection", "classification")),
            Region(3, (80, 0, 128, 48), "bag", 0.7, ("classification",))]


def codec(model, **temporal):
    return CODECS.create({"type": "learned", "quality": 2,
                          "temporal": {"intra_period": 0, **temporal}}, model=model)


def decode(c, coded, table, keep=None):
    regs = coded["regions"] if keep is None else {k: v for k, v in coded["regions"].items()
                                                  if k in keep}
    return c.decompress({"side": coded["side"], "regions": regs, "rest": coded.get("rest"),
                         "table": table, "size": (W, H)})


def kept(c) -> dict[int, np.ndarray]:
    return {rid: k.latent for rid, k in c.frames.state.regions.items()}


def test_closed_loop_decodes_exactly_what_the_encoder_predicts_from(model, frames):
    edge, sink = codec(model), codec(model)
    modes = []
    for i, f in enumerate(frames[:8]):
        table = regions(shift=16 * (i // 3))  # the person box moves one latent cell now and then
        coded = edge.compress(f, table, send_rest=(i == 0))
        modes += [m for m, k in coded.stats.modes.items() for _ in range(k)]
        out = decode(sink, coded, table)
        assert out["errors"] == {} and not out["needs_refresh"]
        enc = kept(edge)
        assert set(out["region_latents"]) == set(enc)
        for rid, lat in out["region_latents"].items():
            assert np.array_equal(lat, enc[rid]), (i, rid)
        assert coded.stats.intra == (i == 0)
    assert modes.count("intra") == 3 and modes.count("residual") > 5  # intra once, then residuals


def test_static_scene_skips_regions_and_reuses_z(model, frames):
    edge, sink = codec(model), codec(model)
    first = edge.compress(frames[0], regions(), send_rest=False)
    again = edge.compress(frames[0], regions(), send_rest=False)
    assert again.stats.modes == {"skip": 3}  # every region skipped
    size = lambda c: len(c["side"]) + sum(map(len, c["regions"].values()))  # noqa: E731
    assert size(again) < 0.15 * size(first), (size(again), size(first))
    assert len(again["side"]) < 25  # z reused: header only
    a = decode(sink, first, regions())
    b = decode(sink, again, regions())
    assert b["errors"] == {}
    for rid in a["region_latents"]:
        assert np.array_equal(a["region_latents"][rid], b["region_latents"][rid])
        assert np.array_equal(a["region_pixels"][rid], b["region_pixels"][rid])


def test_a_moving_box_over_a_static_scene_is_predicted_without_the_move(model, frames):
    """The encoder tries the box's move and no move and keeps the cheaper: when only the box
    moved (a detector's jitter over a static scene), the unmoved reference predicts it."""
    from discover.sdk.codecs.learned.temporal import RESIDUAL, SKIP, parse_ref_header

    edge, sink = codec(model), codec(model)
    first = edge.compress(frames[0], regions(), send_rest=False)
    decode(sink, first, regions())
    moved = regions(shift=16)  # the person box one latent cell to the right, same picture
    coded = edge.compress(frames[0], moved, send_rest=False)
    body = coded["regions"][1][5:]  # after the seal (format version, CRC)
    ref_rid, dx, dy, _ = parse_ref_header(body)
    assert body[0] in (RESIDUAL, SKIP) and ref_rid == 1 and (dx, dy) == (0, 0)
    assert len(coded["regions"][1]) < 0.5 * len(first["regions"][1])
    out = decode(sink, coded, moved)
    assert out["errors"] == {}
    assert np.array_equal(out["region_latents"][1], kept(edge)[1])


def test_a_sink_of_one_task_decodes_its_regions_exactly_like_a_sink_of_all(model, frames):
    """Region 3 serves classification only, so no detection region may take it as reference;
    a detection-only sink then decodes its regions bit-exactly every frame."""
    edge, full, det = codec(model), codec(model), codec(model)
    for i, f in enumerate(frames[:6]):
        table = regions()
        if i >= 2:  # the classification box moves onto the person box's old place
            table[2] = Region(3, (16, 16, 64, 96), "bag", 0.7, ("classification",))
            table[0] = Region(1, (96, 0, 144, 80), "person", 0.9, ("detection",))
        coded = edge.compress(f, table, send_rest=False)
        a = decode(full, coded, table)
        b = decode(det, coded, table, keep={1, 2})
        assert a["errors"] == {} and b["errors"] == {}, (i, b["errors"])
        for rid in (1, 2):
            assert np.array_equal(a["region_latents"][rid], b["region_latents"][rid])
            assert np.array_equal(a["region_pixels"][rid], b["region_pixels"][rid])


def test_late_join_and_loss_recover_with_a_requested_refresh(model, frames):
    edge, early = codec(model), codec(model)
    coded = [edge.compress(frames[0], regions(), send_rest=False)]
    decode(early, coded[0], regions())
    coded.append(edge.compress(frames[1], regions(), send_rest=False))
    late = codec(model)
    out = decode(late, coded[1], regions())
    assert out["needs_refresh"] and set(out["errors"]) == {1, 2, 3}
    assert all("intra refresh" in e for e in out["errors"].values())
    # a region payload lost on the way: that region fails next frame, the others do not
    partial = decode(early, coded[1], regions(), keep={2, 3})
    assert partial["errors"] == {}
    nxt = edge.compress(frames[2], regions(), send_rest=False)
    out = decode(early, nxt, regions())
    assert set(out["errors"]) == {1} and out["needs_refresh"]
    # the sink asks (control topic); the next frame is intra and both sinks decode it
    edge.request_refresh()
    fresh = edge.compress(frames[3], regions(), send_rest=False)
    assert fresh.stats.intra and fresh.stats.modes == {"intra": 3}
    for sink in (early, late):
        out = decode(sink, fresh, regions())
        assert out["errors"] == {} and not out["needs_refresh"]
        for rid, lat in kept(edge).items():
            assert np.array_equal(out["region_latents"][rid], lat)


def test_a_new_region_overlapping_a_predicted_one_decodes_exactly(model, frames):
    """A new (intra) box over part of a continuing (predicted) one: the encoder keeps, for the
    new region, exactly the intra latent the sink decodes, not the predicted cells the earlier
    region left in the overlap (an encoder/decoder drift before the intra coder)."""
    edge, sink = codec(model), codec(model)
    decode(sink, edge.compress(frames[0], regions()[:1], send_rest=False), regions()[:1])
    table = [*regions()[:1], Region(5, (32, 48, 96, 112), "dog", 0.6, ("detection",))]
    coded = edge.compress(frames[1], table, send_rest=False)
    assert coded.stats.modes == {"residual": 1, "intra": 1}
    out = decode(sink, coded, table)
    assert out["errors"] == {}
    for rid, lat in kept(edge).items():
        assert np.array_equal(out["region_latents"][rid], lat), rid


def rest_state(c):
    r = c.frames.state.rest
    return None if r is None else (r.seq, r.latent.copy(), r.have.copy())


def test_rest_is_predicted_from_the_last_rest_and_decodes_exactly(model, frames):
    """Rest on every frame: after the first (intra) one, rest is the residual against the
    background the earlier rests left, cheaper on this static street, bit-exact at the sink."""
    edge, sink = codec(model), codec(model)
    sizes = []
    for i, f in enumerate(frames[:5]):
        table = regions(shift=16 * (i // 2))  # boxes move: cells enter and leave the rest
        coded = edge.compress(f, table, send_rest=True)
        sizes.append(len(coded["rest"]))
        assert coded["rest"][5] == (0 if i == 0 else 1)  # mode after the seal: intra, residual
        out = decode(sink, coded, table)
        assert out["errors"] == {} and out["has_rest"]
        e, s_ = rest_state(edge), rest_state(sink)
        assert e[0] == s_[0] == i and np.array_equal(e[2], s_[2])
        assert np.array_equal(e[1][:, e[2]], s_[1][:, s_[2]])
    assert max(sizes[1:]) < 0.6 * sizes[0], sizes


@pytest.mark.parametrize("density", [0.0, 0.05, 0.9])
def test_changed_cell_mask_is_lossless_and_used_only_where_it_pays(model, density):
    from discover.sdk.codecs.learned.entropy import PayloadError
    from discover.sdk.codecs.learned.temporal import NO_MASK

    t = codec(model).frames
    rng = np.random.default_rng(1)
    m, n = model.config.M, 400
    idx = rng.integers(5, 40, (m, n)).astype(np.int32)
    res_idx = np.maximum(idx - 6, 0)
    cover = rng.random(n) < 0.9
    sym = np.where(rng.random((1, n)) < density, rng.integers(-3, 4, (m, n)), 0)
    sym[:, ~cover] = rng.integers(-5, 6, (m, int((~cover).sum())))  # intra cells
    sym = sym.astype(np.int32)
    body = t._masked_cells(sym, idx, res_idx, cover)
    assert np.array_equal(t._unmasked_cells(body, idx, res_idx, cover), sym)
    plain = bytes([NO_MASK]) + t._cells(sym, idx, res_idx, cover)
    assert len(body) <= len(plain)
    assert (body[0] != NO_MASK) == (density < 0.5), (density, len(body), len(plain))
    if body[0] != NO_MASK:
        with pytest.raises(PayloadError):
            t._unmasked_cells(bytes([200]) + body[1:], idx, res_idx, cover)  # no such row


def test_a_sink_that_missed_a_rest_asks_for_a_refresh(model, frames):
    edge, sink = codec(model), codec(model)
    decode(sink, edge.compress(frames[0], regions(), send_rest=True), regions())
    edge.compress(frames[1], regions(), send_rest=True)  # this frame never reaches the sink
    out = decode(sink, edge.compress(frames[2], regions(), send_rest=True), regions())
    assert out["needs_refresh"] and not out["has_rest"]
    assert any("reference rest missing" in e for e in out["errors"].values()), out["errors"]
    # a frame without rest does not start the background anew; the refresh does
    edge.request_refresh()
    fresh = edge.compress(frames[3], regions(), send_rest=True)
    assert fresh.stats.intra and fresh.rest[5] == 0
    out = decode(sink, fresh, regions())
    assert out["errors"] == {} and out["has_rest"] and not out["needs_refresh"]
    nxt = edge.compress(frames[4], regions(), send_rest=True)
    assert nxt["rest"][5] == 1 and decode(sink, nxt, regions())["errors"] == {}


def test_intra_period_and_damaged_payloads(model, frames):
    edge, sink = codec(model, intra_period=3), codec(model)
    intra = []
    for i, f in enumerate(frames[:7]):
        coded = edge.compress(f, regions(), send_rest=False)
        intra.append(coded.stats.intra)
        if i == 4:  # a residual payload with a flipped byte fails alone, without raising
            bad = dict(coded["regions"])
            bad[2] = bad[2][:-1] + bytes([bad[2][-1] ^ 0xFF])
            out = decode(sink, {**coded, "regions": bad}, regions())
            assert set(out["errors"]) == {2}
        else:
            decode(sink, coded, regions())
    assert intra == [True, False, False, True, False, False, True]


def test_temporal_off_is_the_temporal_streams_intra_frames(model, frames, tmp_path):
    """One side format: with temporal off every frame is intra, byte for byte what the
    temporal stream sends on its intra frames (same frame number); each end loads the model
    through the real checkpoint loader; a temporal-off sink decodes both streams' intra
    frames (and refuses their predicted ones), a temporal one every frame exactly."""
    model.save_pretrained(tmp_path / "ck")
    ck = str(tmp_path / "ck")
    off = CODECS.create({"type": "learned", "checkpoint": ck, "quality": 2,
                         "temporal": {"enabled": False}})
    on = CODECS.create({"type": "learned", "checkpoint": ck, "quality": 2,
                        "temporal": {"intra_period": 3}})
    sink = CODECS.create({"type": "learned", "checkpoint": ck, "temporal": {"enabled": False}})
    sink_on = CODECS.create({"type": "learned", "checkpoint": ck})
    same = 0
    for i, f in enumerate(frames[:6]):
        a = off.compress(f, regions(), send_rest=i % 2 == 0)
        b = on.compress(f, regions(), send_rest=i % 2 == 0)
        assert a.stats.intra and a.stats.modes == {"intra": 3} and a.stats.extra["z_new"]
        assert b.stats.intra == (i % 3 == 0)
        if b.stats.intra:
            assert (a.side, a.regions, a.rest) == (b.side, b.regions, b.rest)
            same += 1
        else:  # predicted regions (the side matches where z was re-sent: it names no mode)
            assert a.regions != b.regions
        out = decode(sink, a, regions())
        assert out["errors"] == {} and not out["needs_refresh"]
        predicted = decode(sink, b, regions())
        assert (predicted["errors"] == {}) == b.stats.intra
        out = decode(sink_on, b, regions())  # the temporal round trip, exact
        assert out["errors"] == {} and out["has_rest"] == (i % 2 == 0)
        for rid, lat in kept(on).items():
            assert np.array_equal(out["region_latents"][rid], lat), (i, rid)
    assert same == 2
    assert off.descriptor()["config"]["temporal"]["enabled"] is False


def test_forged_payloads_of_the_one_format_are_counted_not_raised(model, frames):
    """Bodies forged and re-sealed with a valid CRC and tag (modes that do not exist, cut
    reference headers, garbage cells) reach the decoders: each fails alone, as an error."""
    from discover.sdk.codecs.learned import entropy as en
    from discover.sdk.codecs.learned.intra import IntraCoder

    edge, sink = codec(model), codec(model)
    first = edge.compress(frames[0], regions(), send_rest=True)
    decode(sink, first, regions())
    before = copy.deepcopy(sink.frames.state)
    coded = edge.compress(frames[1], regions(), send_rest=True)
    side = IntraCoder(model.coder()).decode_side(coded.side, en.hyper_grid(W, H), sink.frames)
    box = en.latent_box(regions()[0].box, W, H)
    for body in (b"", b"\x07", b"\x01", b"\x02\xff", b"\x00" + bytes(3), b"\x01\x01\x00\x00\xff",
                 b"\x02\x09\x00\x00"):
        forged = {**coded.regions, 1: en.seal(body, side.region_tag(box))}
        out = sink.decompress({**coded, "regions": forged, "table": regions(), "size": (W, H)})
        assert set(out["errors"]) == {1}, (body, out["errors"])
        assert set(out["region_latents"]) == {2, 3}
        sink.frames.state = copy.deepcopy(before)
    grid = en.latent_grid(W, H)
    boxes = [en.latent_box(r.box, W, H) for r in regions()]
    for body in (b"\x05", b"\x01\x00\x00\x00"):  # no such rest mode; a rest never sent
        out = sink.decompress({**coded, "rest": en.seal(body, side.rest_tag(grid, boxes)),
                               "table": regions(), "size": (W, H)})
        assert set(out["errors"]) == {-1} and not out["has_rest"]
        sink.frames.state = copy.deepcopy(before)
    zh, zw = en.hyper_grid(W, H)
    for head in (struct.pack(">HHBBI", zh, zw, 1, 7, 1),  # no such z mode
                 struct.pack(">HHBBII", zh, zw, 1, 1, 1, 5),  # reuses a z never sent
                 struct.pack(">HHBBI", zh, zw, 1, 1, 1)):  # reuse without its frame
        out = sink.decompress({**coded, "side": en.seal(head, b"side"), "table": regions(),
                               "size": (W, H)})
        assert -2 in out["errors"] and out["needs_refresh"] and out["region_latents"] == {}
        sink.frames.state = copy.deepcopy(before)
def test_residual_offsets_fit_picks_the_cheapest_shift():
    """Residuals much smaller than the hyperprior's scales: the fit lowers the index where
    that saves bits, and never costs more than offset 0."""
    rng = np.random.default_rng(0)
    table = np.exp(np.linspace(np.log(0.11), np.log(256), 64))
    idx = rng.integers(30, 40, size=(2, 4000))
    small = np.rint(rng.normal(0, 0.8, size=4000))
    wide = np.rint(rng.normal(0, table[idx[1]]))
    sym = np.stack([small, wide]).astype(np.int32)
    offsets, bits = fit_offsets([(sym, idx)], table)
    assert offsets[0] > 10 and offsets[1] <= 1
    assert bits["bits_per_cell_after"] < 0.8 * bits["bits_per_cell_before"]
    b = residual_bits(np.array([0, 1, 5]), np.array([1.0, 1.0, 1.0]))
    assert b[0] < b[1] < b[2] and abs(b[0] - -np.log2(0.3829)) < 1e-3


def test_stage_t_fits_the_residual_model_on_consecutive_frames(model, tmp_path):
    """Stage T on the bundled clip: offsets change, the record says how many bits per residual
    cell the fit saves, and the saved checkpoint carries them (new content hash)."""
    import copy

    from discover.sdk.codecs.learned.checkpoint import load_pretrained
    from discover.sdk.codecs.learned.training import TrainConfig, VideoSource, train_codec

    fresh = copy.deepcopy(model)
    fresh.residual_offsets.zero_()
    fresh.save_pretrained(tmp_path / "base")
    before = load_pretrained(tmp_path / "base")
    cfg = TrainConfig(size="tiny", lambdas=(0.01, 0.02), stages=("T",), out=tmp_path, name="t",
                      init=tmp_path / "base", videos=[VideoSource(CLIP, 0, 30)],
                      temporal_pairs=3)
    res = train_codec(cfg, log=lambda _: None,
                      boxes_fn=lambda img: [(400, 96, 656, 352), (0, 0, 64, 64)])
    after = load_pretrained(res["folder"])
    assert after.hash != before.hash
    assert after.model.residual_offsets.shape == (2, 16)
    assert int(after.model.residual_offsets.sum()) > 0
    fit = after.training["stages"][-1]
    assert fit["stage"] == "T" and fit["pairs"] == 3
    for point in fit["rate_points"]:
        assert point["bits_per_cell_after"] <= point["bits_per_cell_before"]
