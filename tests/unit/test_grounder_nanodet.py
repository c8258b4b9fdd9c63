"""nanodet grounder: profile labels mapped onto COCO-80 classes, real model on the real clip."""

from __future__ import annotations

import logging

import av
import pytest
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.errors import DiscoverError
from discover.sdk.grounders import GROUNDERS
from discover.sdk.grounders.label_map import load_label_map
from discover.sdk.models.nanodet import COCO80_LABELS


@pytest.fixture(scope="module")
def frame0():
    with av.open(str(SAMPLE_CLIP)) as c:
        return next(c.decode(video=0)).to_ndarray(format="bgr24")


@pytest.fixture(scope="module")
def grounder():
    return GROUNDERS.create({"type": "nanodet"})


def test_label_map_synonyms_and_class_names():
    m = load_label_map(GROUNDERS.get("nanodet").Config().label_map, COCO80_LABELS)
    assert COCO80_LABELS[m["pedestrian"]] == "person"
    assert COCO80_LABELS[m["van"]] == "truck"
    assert COCO80_LABELS[m["car"]] == "car"  # class names map to themselves
    assert "unicorn" not in m


def test_boxes_carry_the_profile_label(grounder, frame0):
    dets = grounder.ground(frame0, ["pedestrian"])
    assert len(dets) >= 3  # three people walk in frame 0
    assert {d.label for d in dets} == {"pedestrian"}
    h, w = frame0.shape[:2]
    for d in dets:
        x0, y0, x1, y1 = d.box
        assert -1 <= x0 < x1 <= w + 1 and -1 <= y0 < y1 <= h + 1
        assert d.score >= grounder.config.score_threshold


def test_only_requested_classes(grounder, frame0):
    people = grounder.ground(frame0, ["person"])
    both = grounder.ground(frame0, ["person", "car", "truck"])
    assert len(both) > len(people)
    assert {d.label for d in both} <= {"person", "car", "truck"}


def test_unmapped_labels_reported_once(grounder, frame0, caplog):
    with caplog.at_level(logging.WARNING):
        grounder.ground(frame0, ["person", "zeppelin"])
        grounder.ground(frame0, ["person", "zeppelin"])
    # one line with the count and where to see the labels, once, not a list of names
    hits = [r.getMessage() for r in caplog.records if "have no class" in r.getMessage()]
    assert len(hits) == 1 and "1 of 2 profile labels" in hits[0]
    assert "discover ground --labels" in hits[0] and "zeppelin" not in hits[0]


def test_bad_label_map_is_one_clear_error(tmp_path):
    bad = tmp_path / "map.yaml"
    bad.write_text("not_a_class: [x]\n")
    with pytest.raises(DiscoverError, match="not a detector class"):
        GROUNDERS.create({"type": "nanodet", "label_map": str(bad)})


def test_box_label_prefers_class_name_then_profile_order(grounder, frame0):
    dets = grounder.ground(frame0, ["cyclist", "pedestrian", "person"])
    people = [d for d in dets if "pedestrian" in (d.label, *d.aliases)]
    assert len(people) >= 3
    assert {d.label for d in people} == {"person"}  # the class's own name wins
    assert all(set(d.aliases) == {"cyclist", "pedestrian"} for d in people)
    dets = grounder.ground(frame0, ["pedestrian", "cyclist"])
    assert {d.label for d in dets} == {"pedestrian"}  # else the earliest synonym


def test_edge_routes_boxes_to_every_task_whose_labels_match(tmp_path, monkeypatch, frame0):
    """A person box serves a task listing 'person' and one listing only 'pedestrian'."""
    from discover.edge.agent import CameraAgent
    from discover.edge.config import CameraConfig, EdgeSection
    from discover.sdk.transport.broker import BrokerConfig

    for task, labels in {"people": ["person"], "walkers": ["pedestrian"], "cars": ["car"]}.items():
        (tmp_path / f"{task}.yaml").write_text(
            f"format: discover-task-profile\nversion: 1\ntask: {task}\nlabels: {labels}\n")
    monkeypatch.setenv("DISCOVER_PROFILES_DIR", str(tmp_path))
    edge = EdgeSection(grounder={"type": "nanodet"},
                       cameras=[CameraConfig(id="c", source=str(SAMPLE_CLIP),
                                             tasks=["walkers", "people", "cars"])])
    agent = CameraAgent(edge.cameras[0], edge, BrokerConfig(), "discover")
    try:
        dets = agent.grounder.ground(frame0, agent.labels)
        regions = agent.regions(dets, frame0.shape[1], frame0.shape[0])
    finally:
        agent.source.close()
    people = [r for r in regions if r.label == "person"]
    assert len(people) >= 3
    assert all(set(r.tasks) == {"walkers", "people"} for r in people)
    assert all(r.tasks == ("cars",) for r in regions if r.label == "car")


def test_edge_codes_one_object_once_serving_every_task(tmp_path, monkeypatch):
    """A van found as truck (task 'trucks') and car (task 'cars') is one region for both."""
    from discover.edge.agent import CameraAgent
    from discover.edge.config import CameraConfig, EdgeSection
    from discover.sdk.regions import Detection
    from discover.sdk.transport.broker import BrokerConfig

    for task, labels in {"trucks": ["truck"], "cars": ["car"]}.items():
        (tmp_path / f"{task}.yaml").write_text(
            f"format: discover-task-profile\nversion: 1\ntask: {task}\nlabels: {labels}\n")
    monkeypatch.setenv("DISCOVER_PROFILES_DIR", str(tmp_path))
    dets = [Detection((100, 100, 200, 160), "car", 0.4),
            Detection((102, 98, 201, 161), "truck", 0.8),   # the same van, better score
            Detection((400, 100, 450, 150), "car", 0.5)]     # another car
    for iou, expected in ((0.6, 2), (0.0, 3)):
        edge = EdgeSection(grounder={"type": "motion"}, dedupe_iou=iou,
                           cameras=[CameraConfig(id="c", source=str(SAMPLE_CLIP),
                                                 tasks=["trucks", "cars"])])
        agent = CameraAgent(edge.cameras[0], edge, BrokerConfig(), "discover")
        agent.source.close()
        regions = agent.regions(dets, 768, 576)
        assert len(regions) == expected
        if iou:
            van = regions[0]
            assert van.label == "truck" and van.tasks == ("trucks", "cars")
            assert regions[1].tasks == ("cars",)
