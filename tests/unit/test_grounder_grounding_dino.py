"""The grounding-dino grounder (sdk/grounders/grounding_dino.py) on a tiny random model.

No hub here, so a tiny randomly initialised ``GroundingDinoForObjectDetection`` with a real BERT
tokenizer (small vocabulary) is saved to a folder and loaded back through the grounder's own
loader. Random weights find nothing meaningful, so the tests check behaviour: boxes in the
frame, only the given labels, thresholds, chunking under the token limit, NMS and the errors.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from discover.sdk.boxes import nms  # noqa: E402
from discover.sdk.errors import DiscoverError  # noqa: E402
from discover.sdk.grounders.base import GROUNDERS  # noqa: E402
from discover.sdk.grounders.grounding_dino import (  # noqa: E402
    GroundingDinoGrounder,
    ImageTransform,
    TextChunk,
    decode_chunk,
    label_phrase,
    per_label_nms,
    plan_chunks,
)
from discover.sdk.regions import Detection  # noqa: E402

WORDS = ["person", "car", "bicycle", "traffic", "light", "dog", "cat", "bus", "truck",
         "motorcycle", "train", "boat", "bench", "bird", "horse", "sheep", "cow", "stop", "sign"]
LABELS = ["person", "car", "bicycle", "traffic light", "dog", "cat", "bus", "truck",
          "motorcycle", "train", "boat", "bench", "bird", "horse", "sheep", "cow", "stop sign"]
H, W = 120, 160


def _vocab() -> list[str]:
    """BERT vocabulary with [CLS]=101, [SEP]=102, '.'=1012 and '?'=1029: Grounding DINO
    hard-codes these ids (bert-base-uncased) to split the prompt into phrases."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    fill = {1012: ".", 1029: "?"}
    while len(vocab) < 1030:
        vocab.append(fill.get(len(vocab), f"[unused{len(vocab)}]"))
    return vocab + WORDS


def _tiny_model(folder: Path) -> Path:
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        SwinConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab=str(folder / "vocab.txt"))
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=128, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 1, 1], window_size=4, out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=37,
                               max_position_embeddings=256),
        d_model=32,  # input projections use GroupNorm(32, d_model)
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20,
        encoder_n_points=2, decoder_n_points=2, num_feature_levels=4)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    size = {"shortest_edge": 128, "longest_edge": 192}
    try:  # the real processor needs Pillow or torchvision
        from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

        GroundingDinoProcessor(GroundingDinoImageProcessor(size=size), tokenizer).save_pretrained(
            folder)
    except ImportError:  # the file save_pretrained writes (as on the hub), by hand
        tokenizer.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
            "format": "coco_detection", "image_mean": [0.485, 0.456, 0.406],
            "image_processor_type": "GroundingDinoImageProcessor",
            "image_std": [0.229, 0.224, 0.225], "processor_class": "GroundingDinoProcessor",
            "resample": 2, "rescale_factor": 1 / 255, "size": size}))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("gdino") / "tiny-grounding-dino")


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def make(model_dir: Path, **options) -> GroundingDinoGrounder:
    g = GROUNDERS.create({"type": "grounding-dino", "model": str(model_dir), "device": "cpu",
                          **options})
    assert isinstance(g, GroundingDinoGrounder)
    return g


@pytest.fixture(scope="module")
def grounder(model_dir) -> GroundingDinoGrounder:
    return make(model_dir, box_threshold=0.0, text_threshold=0.0)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


# -- config ---------------------------------------------------------------------------------

def test_registered_with_recall_leaning_offline_defaults():
    cfg = GROUNDERS.parse_config("grounding-dino")
    assert cfg.type == "grounding-dino" and cfg.model == "IDEA-Research/grounding-dino-tiny"
    assert (cfg.box_threshold, cfg.text_threshold, cfg.nms_iou) == (0.25, 0.25, 0.5)
    assert cfg.max_text_tokens == 256 and cfg.allow_download is False and cfg.device == "auto"
    with pytest.raises(DiscoverError, match="box_threshold"):
        GROUNDERS.parse_config({"type": "grounding-dino", "box_threshold": 1.01})


# -- chunking -------------------------------------------------------------------------------

def test_long_label_list_is_split_under_the_token_limit(tokenizer):
    chunks = plan_chunks(LABELS, tokenizer, 16)
    assert len(chunks) >= 3
    # every label in exactly one chunk, in order
    assert [lab for c in chunks for lab in c.labels] == LABELS
    for c in chunks:
        real = tokenizer(c.text)["input_ids"]  # the real tokenizer on the chunk's full prompt
        assert list(c.input_ids) == real and len(real) <= 16
        for label, (s, e) in zip(c.labels, c.spans, strict=True):
            assert tokenizer.decode(list(c.input_ids[s:e])) == label_phrase(label)
    # greedy: no chunk could have taken the next chunk's first label
    for a, b in zip(chunks, chunks[1:], strict=False):
        first = len(tokenizer(label_phrase(b.labels[0]), add_special_tokens=False)["input_ids"])
        assert len(a.input_ids) + first + 1 > 16


def test_whole_list_fits_one_chunk_at_256(tokenizer):
    (chunk,) = plan_chunks(LABELS, tokenizer, 256)
    assert chunk.labels == tuple(LABELS)
    assert chunk.text.startswith("person . car . bicycle . traffic light .")


def test_repeated_empty_and_overlong_labels(tokenizer):
    chunks = plan_chunks(["Car", "car", " . ", "person"], tokenizer, 16)
    assert [c.labels for c in chunks] == [("Car", "person")]  # same phrase once, first spelling
    (long,) = plan_chunks([" ".join(["traffic"] * 30)], tokenizer, 16)
    assert len(long.input_ids) == 16 and long.spans == ((1, 14),)
    assert plan_chunks([], tokenizer, 16) == []
    with pytest.raises(DiscoverError, match="max_text_tokens"):
        plan_chunks(LABELS, tokenizer, 3)


# -- decoding and NMS -----------------------------------------------------------------------

def _chunk() -> TextChunk:
    # [CLS] person . traffic light . [SEP]
    return TextChunk(("Person", "Traffic Light"), ("person", "traffic light"),
                     (101, 1, 1012, 2, 3, 1012, 102), ((1, 2), (3, 5)))


def test_decode_maps_token_spans_to_exact_profile_labels():
    probs = np.zeros((4, 7), dtype=np.float32)
    probs[0, 4] = 0.9  # "light" -> Traffic Light
    probs[0, 1] = 0.3
    probs[1, 1] = 0.6  # person
    probs[2, 2] = 0.8  # only the separator: no label above text_threshold -> dropped
    probs[3, 3] = 0.2  # below box_threshold
    boxes = np.array([[0.5, 0.5, 0.5, 0.5], [0.9, 0.1, 0.4, 0.4], [0.5, 0.5, 0.1, 0.1],
                      [0.5, 0.5, 0.1, 0.1]], dtype=np.float32)
    dets = decode_chunk(probs, boxes, _chunk(), 200, 100, box_threshold=0.25, text_threshold=0.25)
    assert [(d.label, round(d.score, 3)) for d in dets] == [("Traffic Light", 0.9),
                                                            ("Person", 0.6)]
    assert dets[0].box == pytest.approx((50.0, 25.0, 150.0, 75.0))
    assert dets[1].box == pytest.approx((140.0, 0.0, 200.0, 30.0))  # clipped to the frame


def test_nms_removes_a_duplicate_of_one_label_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60], [0, 0, 10, 9.5]])
    scores = np.array([0.5, 0.9, 0.4, 0.3])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 0, 2, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    dets = [Detection((0, 0, 10, 10), "car", 0.5), Detection((1, 1, 10, 10), "car", 0.9),
            Detection((0, 0, 10, 10), "truck", 0.7), Detection((50, 50, 60, 60), "car", 0.2)]
    out = per_label_nms(dets, 0.5)
    assert [(d.label, d.score) for d in out] == [("car", 0.9), ("truck", 0.7), ("car", 0.2)]


# -- the grounder on the tiny model ---------------------------------------------------------

def test_boxes_in_frame_labels_from_the_list_scores_sorted(grounder, frame):
    labels = ["Person", "car", "Traffic Light", "dog"]
    dets = grounder.ground(frame, labels)
    assert dets, "threshold 0 keeps every query of the random model"
    for d in dets:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        assert d.label in labels
        assert 0.0 < d.score <= 1.0
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    assert grounder.ground(frame, []) == []


def test_thresholds_filter(model_dir, grounder, frame):
    assert make(model_dir, box_threshold=1.0).ground(frame, LABELS) == []
    picky = make(model_dir, box_threshold=0.5, text_threshold=0.0)
    all_dets = grounder.ground(frame, LABELS)
    kept = picky.ground(frame, LABELS)
    assert all(d.score > 0.5 for d in kept)
    assert len(kept) <= len(all_dets)
    assert make(model_dir, box_threshold=0.0, text_threshold=1.0).ground(frame, LABELS) == []
    assert all(d.score >= 0.6 for d in make(model_dir, min_score=0.6, box_threshold=0.0,
                                            text_threshold=0.0).ground(frame, LABELS))


def test_one_forward_per_chunk_and_one_backbone_pass_per_frame(model_dir, frame):
    g = make(model_dir, box_threshold=0.0, text_threshold=0.0, max_text_tokens=16)
    chunks = g.chunks(LABELS)
    assert len(chunks) >= 3 and all(len(c.input_ids) <= 16 for c in chunks)
    calls = []
    inner = g.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[1])
        return inner(*args, **kwargs)

    g.model.forward = counting_forward
    assert g.backbone.installed
    runs = g.backbone.runs
    reused = g.ground(frame, LABELS)
    assert calls == [len(c.input_ids) for c in chunks]
    assert g.backbone.runs == runs + 1  # Swin ran once for all chunks

    g.backbone.enabled = False  # reference: every chunk runs the whole model
    fresh = g.ground(frame, LABELS)
    assert g.backbone.runs == runs + 1 + len(chunks)
    assert [d.label for d in reused] == [d.label for d in fresh]
    for a, b in zip(reused, fresh, strict=True):
        assert a.box == pytest.approx(b.box, abs=1e-3) and a.score == pytest.approx(b.score,
                                                                                    abs=1e-5)
    assert {d.label for d in reused} <= set(LABELS)


def test_chunks_are_planned_once_per_label_list(grounder, monkeypatch):
    import discover.sdk.grounders.grounding_dino as gd

    planned = []
    real = gd.plan_chunks
    monkeypatch.setattr(gd, "plan_chunks", lambda *a: planned.append(1) or real(*a))
    labels = ["bus", "train", "boat"]
    first = grounder.chunks(labels)
    assert grounder.chunks(list(labels)) is first and len(planned) == 1


# -- loading errors -------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Offline mode, and any attempt to open a connection fails the test."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == [], "the loader tried to reach the network"


def test_unknown_model_id_offline_names_it_and_how_to_get_it(no_network):
    with pytest.raises(DiscoverError) as e:
        GROUNDERS.create({"type": "grounding-dino", "model": "discover-test/no-such-dino",
                          "device": "cpu"})
    msg = str(e.value)
    assert "discover-test/no-such-dino" in msg and "hf download discover-test/no-such-dino" in msg
    assert "\n" not in msg and "Traceback" not in msg


def test_default_model_absent_offline(no_network):
    with pytest.raises(DiscoverError, match="IDEA-Research/grounding-dino-tiny"):
        GROUNDERS.create({"type": "grounding-dino", "device": "cpu"})


def test_missing_or_incomplete_folder(tmp_path, no_network):
    with pytest.raises(DiscoverError, match="does not exist") as e:
        GROUNDERS.create({"type": "grounding-dino", "model": str(tmp_path / "nope")})
    assert "IDEA-Research/grounding-dino-tiny" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiscoverError, match="cannot load grounding-dino model from folder"):
        GROUNDERS.create({"type": "grounding-dino", "model": str(tmp_path / "empty")})


def test_cuda_without_gpu_is_a_user_error(model_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DiscoverError, match="cuda"):
        GROUNDERS.create({"type": "grounding-dino", "model": str(model_dir), "device": "cuda"})


# -- image preprocessing --------------------------------------------------------------------

def test_resize_follows_the_processor_rules():
    from transformers.image_transforms import get_size_with_aspect_ratio

    t = ImageTransform()  # grounding-dino-tiny: shortest edge 800, longest 1333
    assert t.output_size(576, 768) == (800, 1066)
    for hw in [(1080, 1920), (800, 600), (600, 800), (120, 160), (2000, 500), (333, 2000)]:
        assert t.output_size(*hw) == get_size_with_aspect_ratio(hw, 800, 1333)
    legacy = ImageTransform.from_processor_dict({"size": 512, "max_size": 700})
    assert (legacy.shortest_edge, legacy.longest_edge) == (512, 700)
    fixed = ImageTransform.from_processor_dict({"size": {"height": 64, "width": 96}})
    assert fixed.output_size(576, 768) == (64, 96)
    with pytest.raises(DiscoverError, match="size"):
        ImageTransform.from_processor_dict({"size": {"longest_edge": 5}})
    x = ImageTransform(shortest_edge=128, longest_edge=192).pixel_values(
        np.zeros((H, W, 3), np.uint8), torch.device("cpu"))
    assert x.shape == (1, 3, 128, 170) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == pytest.approx([-0.485 / 0.229, -0.456 / 0.224,
                                                     -0.406 / 0.225], abs=1e-5)


def test_pixels_match_the_transformers_processor(model_dir, frame):
    from transformers import AutoImageProcessor

    try:
        reference = AutoImageProcessor.from_pretrained(str(model_dir))
    except ImportError:
        pytest.skip("the transformers image processor needs Pillow or torchvision")
    ref = reference(images=frame[..., ::-1].copy(), return_tensors="pt")["pixel_values"]
    ours = make(model_dir).transform.pixel_values(frame, torch.device("cpu"))
    assert ours.shape == ref.shape
    assert float((ours - ref).abs().mean()) < 0.1  # resampling filters differ slightly
