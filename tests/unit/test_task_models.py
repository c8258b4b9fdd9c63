"""Machine-task models on real frames of the sample clip, loaded as a deployment loads them
(``TASK_MODELS.create(config)``); torchvision models with ``weights: random`` (no weights
offline) for the schema, and the hub-cache loading path with a saved random checkpoint."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from discover.sdk import masks
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.errors import DiscoverError
from discover.sdk.models.nanodet import COCO80_LABELS, NanoDet
from discover.sdk.regions import Region, pad_and_clip
from discover.sink.config import SinkSection
from discover.sink.tasks import TASK_MODELS
from discover.sink.tasks.classify import imagenet_categories
from discover.sink.tasks.coco import COCO80_TO_COCO91

VEHICLES = {"moving van", "minivan", "police van", "ambulance", "minibus", "recreational vehicle",
            "trailer truck", "pickup", "tow truck", "limousine", "cab", "station wagon",
            "garbage truck", "trolleybus", "mobile home", "jeep", "car wheel", "grille"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread here: on a busy 2-core machine libgomp's spinning threads made each
    2-thread forward pass ~35x slower (ResNet-50: 3.9 s vs 0.11 s); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def frame0() -> np.ndarray:
    with av.open(str(SAMPLE_CLIP)) as c:
        return next(c.decode(video=0)).to_ndarray(format="bgr24")


@pytest.fixture(scope="module")
def nanodet() -> NanoDet:
    return NanoDet()


@pytest.fixture(scope="module")
def people(frame0, nanodet) -> np.ndarray:
    """Tight boxes of the three people walking in frame 0."""
    d = nanodet.detect(frame0, score_threshold=0.5)
    boxes = d.boxes[np.array(d.labels) == "person"]
    assert len(boxes) == 3
    return boxes


@pytest.fixture(scope="module")
def regions(frame0, nanodet) -> list[Region]:
    """Frame 0's region table as the edge builds it: grounded boxes padded 10 %, snapped to 16 px,
    the people labelled by the profile word "pedestrian", all serving task "t"."""
    h, w = frame0.shape[:2]
    names = {"person": "pedestrian", "truck": "van", "car": "car"}
    d = nanodet.detect(frame0, score_threshold=0.3)
    out = []
    for box, score, label in zip(d.boxes, d.scores, d.labels, strict=True):
        padded = pad_and_clip(box, 0.1, w, h, 16)
        if label in names and padded is not None:
            out.append(Region(len(out), padded, names[label], float(score), ("t",)))
    return out


def info(regions: list[Region] | None = None) -> dict:
    return {"task": "t", "regions": regions or [], "region_errors": {}, "camera": "c",
            "frame": 0}


def check_bbox(bbox: list[float], w: int, h: int) -> None:
    x, y, bw, bh = bbox
    assert x >= 0 and y >= 0 and bw > 0 and bh > 0
    assert x + bw <= w + 0.01 and y + bh <= h + 0.01


# -- registry and config ----------------------------------------------------------------------

def test_every_backend_is_registered_and_selectable_in_a_sink_config():
    keys = {"nanodet", "efficientnet-lite0", "person-mask", "fasterrcnn", "maskrcnn", "resnet50"}
    assert keys <= set(TASK_MODELS.keys())
    s = SinkSection(tasks=["det", "seg"], task_models={
        "det": {"type": "fasterrcnn", "weights": "random", "device": "cpu"},
        "seg": {"type": "person-mask", "boxes": "nanodet"}})
    assert s.task_models["det"].weights == "random"
    with pytest.raises(DiscoverError, match="weights"):
        TASK_MODELS.parse_config({"type": "resnet50", "weights": 3})


def test_coco80_to_coco91_matches_torchvision_category_ids():
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    coco91 = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert [coco91[i] for i in COCO80_TO_COCO91] == list(COCO80_LABELS)


# -- nanodet ----------------------------------------------------------------------------------

def test_nanodet_finds_the_people_in_coco_format(frame0):
    model = TASK_MODELS.create({"type": "nanodet"})
    res = model.run(frame0, info())
    json.dumps(res)
    h, w = frame0.shape[:2]
    persons = [d for d in res["detections"] if d["label"] == "person"]
    assert len(persons) >= 3
    assert all(d["category_id"] == 1 for d in persons)
    cars = [d for d in res["detections"] if d["label"] in ("car", "truck")]
    assert cars and {d["category_id"] for d in cars} <= {3, 8}  # COCO ids, not 80-class indices
    for d in res["detections"]:
        check_bbox(d["bbox"], w, h)
        assert d["score"] >= model.config.score_threshold
    # the people walk on the road and the grass in the middle band of the frame
    assert all(150 < d["bbox"][1] + d["bbox"][3] < 340 for d in persons[:3])


def test_nanodet_class_filter_and_unknown_class(frame0):
    res = TASK_MODELS.create({"type": "nanodet", "classes": ["Person"]}).run(frame0, info())
    assert len(res["detections"]) >= 3 and {d["label"] for d in res["detections"]} == {"person"}
    with pytest.raises(DiscoverError, match="pedestrain"):
        TASK_MODELS.create({"type": "nanodet", "classes": ["pedestrain"]})


# -- efficientnet-lite0 -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def effnet():
    return TASK_MODELS.create({"type": "efficientnet-lite0", "device": "cpu"})


def test_efficientnet_calls_the_parked_van_a_vehicle(effnet, frame0, regions):
    vans = [r for r in regions if r.label == "van"]
    assert vans
    res = effnet.run(frame0, info(vans[:1]))
    json.dumps(res)
    (entry,) = res["regions"]
    top = entry["top"]
    names = set(imagenet_categories())
    assert len(top) == 5 and all(t["label"] in names for t in top)
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert top[0]["score"] > 0.2
    assert VEHICLES & {t["label"] for t in top}
    assert entry["id"] == vans[0].rid and entry["region_label"] == "van"


def test_efficientnet_is_deterministic_and_sums_to_one(effnet, frame0, regions):
    a = effnet.run(frame0, info(regions))
    b = effnet.run(frame0, info(regions))
    assert a == b and len(a["regions"]) == len(regions)
    from discover.sink.tasks.classify import center_crop

    p = effnet.probabilities([center_crop(frame0, 256, 224)])
    assert p.shape == (1, 1000) and abs(float(p.sum()) - 1) < 1e-4 and p.min() >= 0
    whole = TASK_MODELS.create({"type": "efficientnet-lite0", "per_region": False, "top_k": 3})
    res = whole.run(frame0, info(regions))
    assert set(res) == {"model", "top"} and len(res["top"]) == 3
    assert res["top"][0]["index"] == int(np.argmax(p))
    # regions of other tasks are not classified
    assert effnet.run(frame0, {**info(regions), "task": "other"})["regions"] == []


# -- person-mask ------------------------------------------------------------------------------

def _union(res: dict, shape: tuple[int, int]) -> np.ndarray:
    u = np.zeros(shape, bool)
    for m in res["masks"]:
        d = masks.decode(m["segmentation"])
        assert d.shape == shape
        u |= d
    return u


def _inside(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    inside = np.zeros(shape, bool)
    for x0, y0, x1, y1 in np.round(boxes).astype(int):
        inside[y0:y1, x0:x1] = True
    return inside


def test_person_mask_covers_the_people_not_the_background(frame0, regions, people):
    model = TASK_MODELS.create({"type": "person-mask"})
    res = model.run(frame0, info(regions))
    json.dumps(res)
    shape = frame0.shape[:2]
    union = _union(res, shape)
    inside = _inside(people, shape)
    # measured: 0.47 inside the tight boxes (a walking person fills about half of it), 0.001
    # outside (a few pixels of a false "person" box on the grass)
    assert union[inside].mean() > 0.35
    assert union[~inside].mean() < 0.01
    assert all(m["label"] == "person" and m["category_id"] == 1 for m in res["masks"])
    ids = {m["id"] for m in res["masks"]}
    assert ids <= {r.rid for r in regions if r.label == "pedestrian"}  # never the van or cars
    for box in people:  # each person is one instance whose mask box matches the person
        best = max(_iou(box, m["bbox"]) for m in res["masks"])
        assert best > 0.6
    for m in res["masks"]:
        assert masks.area(m["segmentation"]) == m["area"] >= model.config.min_area
        assert masks.bbox(masks.decode(m["segmentation"])) == m["bbox"]
        assert 0 < m["score"] <= 1


def _iou(box: np.ndarray, xywh: list[float]) -> float:
    x0, y0, x1, y1 = (float(v) for v in box)
    a0, b0, a1, b1 = xywh[0], xywh[1], xywh[0] + xywh[2], xywh[1] + xywh[3]
    iw = max(0.0, min(x1, a1) - max(x0, a0))
    ih = max(0.0, min(y1, b1) - max(y0, b0))
    inter = iw * ih
    return inter / ((x1 - x0) * (y1 - y0) + (a1 - a0) * (b1 - b0) - inter)


def test_person_mask_with_nanodet_boxes_and_whole_frame_mode(frame0, regions, people):
    shape = frame0.shape[:2]
    res = TASK_MODELS.create({"type": "person-mask", "boxes": "nanodet"}).run(frame0, info())
    assert len(res["masks"]) >= 3 and all("id" not in m for m in res["masks"])
    assert _union(res, shape)[_inside(people, shape)].mean() > 0.35
    res = TASK_MODELS.create({"type": "person-mask", "mode": "frame"}).run(frame0, info(regions))
    union = _union(res, shape)  # the selfie model on a whole street frame: weak, but in the boxes
    assert union[~_inside(np.array([r.box for r in regions]), shape)].sum() == 0
    assert TASK_MODELS.create({"type": "person-mask"}).run(frame0, info())["masks"] == []


# -- torchvision models (random weights: no hub weights offline) ------------------------------

@pytest.fixture(scope="module")
def small_frame(frame0) -> np.ndarray:
    import cv2

    return cv2.resize(frame0, (192, 144), interpolation=cv2.INTER_AREA)


FAST = {"weights": "random", "device": "cpu", "min_size": 144, "max_size": 192,
        "proposals": 50, "score_threshold": 0.0, "max_detections": 20}


def test_fasterrcnn_random_weights_schema(small_frame):
    import torch

    torch.manual_seed(0)
    res = TASK_MODELS.create({"type": "fasterrcnn", **FAST}).run(small_frame, info())
    json.dumps(res)
    assert res["model"] == "fasterrcnn" and 0 < len(res["detections"]) <= 20
    for d in res["detections"]:
        check_bbox(d["bbox"], 192, 144)
        assert d["label"] not in ("N/A", "__background__") and 1 <= d["category_id"] <= 90


def test_maskrcnn_random_weights_masks_decode_to_the_frame(small_frame):
    import torch

    torch.manual_seed(0)
    res = TASK_MODELS.create({"type": "maskrcnn", **FAST}).run(small_frame, info())
    json.dumps(res)
    assert res["model"] == "maskrcnn" and res["masks"]
    for m in res["masks"]:
        d = masks.decode(m["segmentation"])
        assert d.shape == (144, 192) and int(d.sum()) == m["area"]
        check_bbox(m["bbox"], 192, 144)
        assert 1 <= m["category_id"] <= 90 and m["label"] != "N/A"


def test_resnet50_random_weights_schema(small_frame, regions):
    import torch

    torch.manual_seed(0)
    model = TASK_MODELS.create({"type": "resnet50", "weights": "random", "device": "cpu"})
    assert (model.size, model.resize) == (224, 232)  # IMAGENET1K_V2's own transform
    res = model.run(small_frame, info())
    assert res == {"model": "resnet50", "regions": []}
    res = TASK_MODELS.create({"type": "resnet50", "weights": "random", "per_region": False}).run(
        small_frame, info())
    json.dumps(res)
    assert len(res["top"]) == 5 and {t["label"] for t in res["top"]} <= set(imagenet_categories())


# -- weights: missing, from the hub cache, wrong ----------------------------------------------

@pytest.mark.parametrize("key,file", [
    ("fasterrcnn", "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"),
    ("maskrcnn", "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"),
    ("resnet50", "resnet50-11ad3fa6.pth"),
])
def test_missing_hub_weights_are_one_line_naming_the_file(key, file, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DiscoverError) as e:
        TASK_MODELS.create({"type": key})
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "hub" / "checkpoints" / file) in msg
    assert "download" in msg.lower() and "random" in msg


def test_missing_local_weights_name_the_file(tmp_path):
    for cfg in ({"type": "efficientnet-lite0", "weights": str(tmp_path / "e.pth")},
                {"type": "person-mask", "weights": str(tmp_path / "p.onnx")},
                {"type": "nanodet", "weights": str(tmp_path / "n.onnx")},
                {"type": "maskrcnn", "weights": str(tmp_path / "m.pth")}):
        with pytest.raises(DiscoverError) as e:
            TASK_MODELS.create(cfg)
        assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_weights_load_from_the_hub_cache_and_wrong_files_are_refused(tmp_path, monkeypatch,
                                                                     small_frame):
    import torch
    from torchvision.models import resnet50

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    ref = resnet50().eval()
    ckpt = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpt)
    model = TASK_MODELS.create({"type": "resnet50", "per_region": False, "device": "cpu"})
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(model.net(x), ref(x))  # the cached file was loaded, not random init
    with pytest.raises(DiscoverError, match="does not fit") as e:
        TASK_MODELS.create({"type": "fasterrcnn", "weights": str(ckpt)})
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DiscoverError, match="cannot read weights"):
        TASK_MODELS.create({"type": "resnet50", "weights": str(junk)})


def test_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DiscoverError, match="cuda"):
        TASK_MODELS.create({"type": "resnet50", "weights": "random", "device": "cuda"})
