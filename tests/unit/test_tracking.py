"""TrackingGrounder (sdk/tracking.py): the real grounder every K frames and on scene change,
boxes tracked in between; its config in edge/config.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import pytest
from discover.edge.config import CameraConfig, EdgeSection
from discover.sdk.errors import DiscoverError
from discover.sdk.grounders import GROUNDERS
from discover.sdk.metrics import average_precision
from discover.sdk.regions import Detection
from discover.sdk.tracking import TrackingConfig, TrackingGrounder, scene_difference, thumbnail
from pydantic import ValidationError

CLIP = Path(__file__).resolve().parents[2] / "sdk" / "assets" / "sample" / "street.mp4"


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    with av.open(str(CLIP)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(frames) == 100
    return frames


class Scripted:
    """A grounder double: records the frame numbers it ran on; ``answer(n)`` gives the boxes
    for the n-th frame the wrapper saw (``n`` counts every frame, grounded or not)."""

    class_agnostic = False

    def __init__(self, answer=lambda n: []) -> None:  # noqa: ANN001
        self.answer = answer
        self.calls: list[int] = []
        self.n = -1

    def describe(self) -> dict:
        return {"type": "scripted"}

    def ground(self, frame: np.ndarray, labels: Sequence[str]) -> list[Detection]:
        self.calls.append(self.n)
        return list(self.answer(self.n))


def run(tg: TrackingGrounder, g: Scripted, frames: Sequence[np.ndarray],
        labels: Sequence[str] = ("person",)) -> list[list[Detection]]:
    out = []
    for i, f in enumerate(frames):
        g.n = i
        out.append(tg.ground(f, labels))
    return out


# -- when the real grounder runs -----------------------------------------------------------------

@pytest.mark.parametrize("every", [1, 3, 5, 7])
def test_grounds_every_kth_frame(clip, every):
    g = Scripted()
    tg = TrackingGrounder(g, TrackingConfig(every=every))
    run(tg, g, clip[:23])
    assert g.calls == list(range(0, 23, every))
    assert tg.grounded == len(g.calls) and tg.frames == 23 and tg.scene_changes == 0


def test_default_is_every_frame_and_a_pass_through(clip):
    box = Detection((10.0, 20.0, 50.0, 90.0), "person", 0.8, ("pedestrian",))
    g = Scripted(lambda n: [box])
    tg = TrackingGrounder(g)
    out = run(tg, g, clip[:4])
    assert g.calls == [0, 1, 2, 3]
    assert all(o == [box] for o in out)
    assert "tracking" not in tg.describe()  # the stream descriptor is unchanged by default


@pytest.mark.parametrize("cut", ["flipped", "black", "other clip"])
def test_scene_change_grounds_at_once(clip, cut):
    g = Scripted()
    tg = TrackingGrounder(g, TrackingConfig(every=50))
    changed = {"flipped": clip[3][::-1].copy(), "black": np.zeros_like(clip[3]),
               "other clip": np.roll(clip[3], clip[3].shape[1] // 2, axis=1)}[cut]
    frames = [clip[0], clip[1], clip[2], changed, changed, clip[5], clip[6]]
    run(tg, g, frames)
    # frame 3 is the cut; frame 4 is the same picture (no new change); frame 5 cuts back
    assert g.calls == [0, 3, 5]
    assert tg.scene_changes == 2


def test_scene_change_threshold_one_disables_it(clip):
    g = Scripted()
    tg = TrackingGrounder(g, TrackingConfig(every=50, scene_change=1.0))
    run(tg, g, [clip[0], clip[1], np.zeros_like(clip[0]), clip[0][::-1].copy()])
    assert g.calls == [0]


def test_normal_motion_is_no_scene_change(clip):
    """The default threshold sits well above what walking people do to the thumbnail."""
    ref = thumbnail(np.ascontiguousarray(clip[0][..., 1]))
    worst = max(scene_difference(thumbnail(np.ascontiguousarray(f[..., 1])), ref)
                for f in clip[:30])
    assert worst < TrackingConfig().scene_change / 2
    flipped = thumbnail(np.ascontiguousarray(clip[0][::-1, :, 1]))
    assert scene_difference(flipped, ref) > TrackingConfig().scene_change


def test_new_labels_ground_at_once(clip):
    g = Scripted()
    tg = TrackingGrounder(g, TrackingConfig(every=10))
    for i, labels in enumerate([["person"], ["person"], ["car"], ["car"]]):
        g.n = i
        tg.ground(clip[i], labels)
    assert g.calls == [0, 2]


# -- tracking between groundings -----------------------------------------------------------------

def textured_scene(shift: int, size: int = 200) -> tuple[np.ndarray, tuple[float, ...]]:
    """A flat grey frame with a 40 px random-texture square whose left edge is at 40 + shift."""
    rng = np.random.default_rng(7)
    patch = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    frame = np.full((size, size, 3), 128, np.uint8)
    x = 40 + shift
    frame[80:120, x:x + 40] = patch
    return frame, (float(x), 80.0, float(x + 40), 120.0)


def test_flow_follows_a_moving_object():
    frames, boxes = zip(*(textured_scene(3 * i) for i in range(5)), strict=True)
    g = Scripted(lambda n: [Detection(boxes[0], "person", 0.9)])
    flow = TrackingGrounder(g, TrackingConfig(every=5, tracker="flow"))
    out = run(flow, g, frames)
    assert g.calls == [0]
    for i in range(1, 5):
        assert len(out[i]) == 1
        got = np.array(out[i][0].box)
        assert np.abs(got - np.array(boxes[i])).max() < 1.5, (i, got, boxes[i])
        assert out[i][0].label == "person" and out[i][0].score == pytest.approx(0.9)
    g2 = Scripted(lambda n: [Detection(boxes[0], "person", 0.9)])
    hold = run(TrackingGrounder(g2, TrackingConfig(every=5, tracker="hold")), g2, frames)
    assert hold[4][0].box == boxes[0]  # the baseline does not move


@pytest.mark.parametrize("tracker", ["flow", "iou"])
def test_lost_box_is_kept_and_moves_at_its_velocity(tracker):
    """On a featureless frame flow finds no points: the box is kept, never dropped before the
    next grounding, and moves at the velocity its two groundings gave (20 px in 5 frames)."""
    flat = np.full((120, 200, 3), 90, np.uint8)
    first, second = (10.0, 40.0, 40.0, 80.0), (30.0, 40.0, 60.0, 80.0)
    g = Scripted(lambda n: [Detection(first if n == 0 else second, "car", 0.7, ("vehicle",))])
    tg = TrackingGrounder(g, TrackingConfig(every=5, tracker=tracker))
    out = run(tg, g, [flat] * 9)
    assert g.calls == [0, 5]
    assert [len(o) for o in out] == [1] * 9
    assert [o[0].box[0] for o in out[1:5]] == [10.0] * 4  # no velocity known yet
    assert [o[0].box[0] for o in out[6:9]] == pytest.approx([34.0, 38.0, 42.0])
    assert out[8][0].aliases == ("vehicle",)
    assert tg.lost_frames == (7 if tracker == "flow" else 0)


def test_box_leaving_the_frame_is_dropped():
    """A textured square runs out of the right edge at 10 px/frame: flow follows it, then it
    moves on at its last velocity once its points are gone, and is dropped when outside."""
    rng = np.random.default_rng(3)
    patch = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    frames = []
    for i in range(12):
        f = np.full((200, 200, 3), 128, np.uint8)
        x = 120 + 10 * i
        if x < 200:
            f[80:120, x:min(200, x + 40)] = patch[:, :min(40, 200 - x)]
        frames.append(f)
    g = Scripted(lambda n: [Detection((120.0, 80.0, 160.0, 120.0), "person", 0.9)])
    tg = TrackingGrounder(g, TrackingConfig(every=50, tracker="flow"))
    out = run(tg, g, frames)
    assert g.calls == [0]
    assert out[3][0].box[0] == pytest.approx(150.0, abs=1.5)
    assert len(out[7]) == 1  # partly visible
    assert out[11] == []  # left the frame (x0 would be 230)


def test_tracking_keeps_boxes_on_moving_people(clip):
    """The point of tracking: with nanodet grounding every 5th frame, the tracked person boxes
    agree with grounding every frame much better than holding the last boxes still."""
    nanodet = GROUNDERS.create({"type": "nanodet"})
    labels = ["person"]
    every_frame = [nanodet.ground(f, labels) for f in clip]
    refs = [[(d.box, d.label) for d in ds] for ds in every_frame]
    assert sum(map(len, refs)) >= 3 * len(clip)  # people walk through the whole clip

    def agreement(tracker: str) -> float:
        g = Scripted(lambda n: every_frame[n])  # nanodet's own boxes for that frame
        tg = TrackingGrounder(g, TrackingConfig(every=5, tracker=tracker))
        out = run(tg, g, clip, labels)
        assert g.calls == list(range(0, len(clip), 5))
        return average_precision([[(d.box, d.label, d.score) for d in ds] for ds in out],
                                 refs, 0.5).map

    flow, iou, hold = agreement("flow"), agreement("iou"), agreement("hold")
    assert flow > 0.6
    assert flow > hold + 0.1, (flow, hold)
    assert iou > hold, (iou, hold)


# -- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [{"every": 0}, {"every": -2}, {"tracker": "kalman"},
                                 {"scene_change": 1.5}, {"scene_change": -0.1},
                                 {"every": 2, "nosuch": 1}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        TrackingConfig(**bad)
    with pytest.raises(ValidationError):
        EdgeSection(tracking=bad)


def test_config_defaults():
    """The edge grounds every 3rd frame by default (real time on 2 cores, edge/config.py);
    the section itself grounds every frame."""
    c = EdgeSection().tracking
    assert c.every == 3 and c.active and c.tracker == "flow" and 0 < c.scene_change < 1
    assert TrackingConfig().every == 1 and not TrackingConfig().active


def test_per_camera_override():
    edge = EdgeSection(tracking={"every": 4},
                       cameras=[CameraConfig(id="a", source="x.mp4"),
                                CameraConfig(id="b", source="y.mp4",
                                             tracking={"every": 2, "tracker": "iou"})])
    assert edge.tracking_for(edge.cameras[0]).every == 4
    b = edge.tracking_for(edge.cameras[1])
    assert (b.every, b.tracker) == (2, "iou")


def test_command_line_overrides_are_validated():
    from discover.sdk.config import load_config

    from discover.config import Deployment

    dep = load_config(Deployment, None, ["edge.tracking.every=5", "edge.tracking.tracker=iou"])
    assert dep.edge.tracking.every == 5 and dep.edge.tracking.tracker == "iou"
    with pytest.raises(DiscoverError, match=r"edge\.tracking\.every"):
        load_config(Deployment, None, ["edge.tracking.every=0"])
    with pytest.raises(DiscoverError, match="edge.tracking.nosuch"):
        load_config(Deployment, None, ["edge.tracking.nosuch=1"])
    dep = load_config(Deployment, None, [], environ={"DISCOVER_EDGE__TRACKING__EVERY": "3"})
    assert dep.edge.tracking.every == 3
