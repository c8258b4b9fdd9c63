"""Ground every K-th frame and track the boxes in between (issue 5, "live video").

Grounding every frame (the paper's setting) costs a detector pass per frame, too slow for many
gateways. :class:`TrackingGrounder` wraps any grounder: it runs the real grounder on the first
frame, then every ``every`` frames, and at once when the scene changes; on the frames between,
it moves the last grounded boxes with a cheap tracker::

    frame -> grey -> 32x24 thumbnail --MAD vs last grounded > scene_change?--+
       |                                                                     | yes, or every-th
       |  no                                                                 v   frame, or labels
       v                                                           grounder.ground (the real one)
    tracker: flow  LK optical flow of good features inside each box          |
                   (forward-backward checked): median shift + scale    boxes matched by IoU to
             iou   no image work: boxes move at the velocity their     the tracked ones: each
                   IoU match between the last two groundings gave      box's velocity
             hold  boxes stay where they were grounded (baseline)

A box whose flow points are lost (too few features, occlusion, blur) is **kept**, moved at its
last velocity, until the next grounding (at most ``every - 1`` frames): a missed object is never
sent, while a stale box only costs bits, so recall wins. A box that leaves the frame is dropped.
Labels, aliases and scores are those of the grounding the box came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
from discover.sdk.boxes import box_iou
from discover.sdk.grounders.base import Grounder
from discover.sdk.regions import Detection
from pydantic import BaseModel, ConfigDict, Field

THUMB_SIZE = (32, 24)  #: width, height of the scene-change thumbnail
MIN_POINTS = 3  #: fewer tracked points than this and a box counts as lost
MAX_CORNERS = 24  #: features per box
FB_MAX_ERR = 1.0  #: forward-backward error (pixels) above which a flow point is rejected
MATCH_IOU = 0.2  #: IoU for a new grounding's box to continue a tracked one (velocity)
LK_WIN = (15, 15)
LK_LEVELS = 2


class TrackingConfig(BaseModel):
    """``edge.tracking``: how often the real grounder runs and what moves boxes in between."""

    model_config = ConfigDict(extra="forbid")
    every: int = Field(1, ge=1, le=10_000, description="run the grounder on every N-th frame and "
                       "track its boxes on the frames between (1: ground every frame, the "
                       "paper's setting; 5 cuts grounding cost about five times)")
    tracker: Literal["flow", "iou", "hold"] = Field(
        "flow", description="what moves boxes between groundings: 'flow' (Lucas-Kanade optical "
        "flow of features inside each box, median shift and scale; a box whose points are "
        "lost moves at its last velocity), 'iou' (no image work: each box moves at the velocity "
        "its IoU match between the last two groundings gave), 'hold' (boxes stay put)")
    scene_change: float = Field(0.1, ge=0, le=1, description="ground at once when the mean "
                                "absolute difference of a 32x24 grey thumbnail against the last "
                                "grounded frame's exceeds this share of full scale (a cut, a "
                                "camera moved, lights; 1: never). Normal motion on a street "
                                "camera stays under 0.03")

    @property
    def active(self) -> bool:
        """Whether any frame skips the real grounder."""
        return self.every > 1


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """A small float32 grey thumbnail in [0, 1] for scene-change detection."""
    return cv2.resize(gray, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def scene_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (0: same, 1: black vs white)."""
    return float(np.abs(a - b).mean())


@dataclass
class Track:
    """A box between groundings: where it is now, and how it moves per frame."""

    box: np.ndarray  # x0, y0, x1, y1 (float64)
    label: str
    score: float
    aliases: tuple[str, ...]
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # dx, dy per frame
    anchor: np.ndarray = field(default_factory=lambda: np.zeros(2))  # centre when grounded
    lost: int = 0  # consecutive frames without enough flow points

    def detection(self) -> Detection:
        return Detection(tuple(float(v) for v in self.box), self.label, self.score, self.aliases)


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


class TrackingGrounder:
    """Wraps a grounder: the real one every ``every`` frames (and on scene change), a tracker
    between. Same ``ground(frame, labels)`` call; ``grounded`` counts real grounder runs."""

    def __init__(self, grounder: Grounder, config: TrackingConfig | None = None) -> None:
        self.grounder = grounder
        self.config = config or TrackingConfig()
        self.frames = 0  #: frames seen
        self.grounded = 0  #: frames the real grounder ran on
        self.scene_changes = 0  #: groundings forced by a scene change
        self.lost_frames = 0  #: box-frames moved by velocity because flow points were lost
        self.last_grounded = False  #: whether the latest frame ran the real grounder
        self._tracks: list[Track] = []
        self._since = 0  # frames since the last grounding
        self._labels: tuple[str, ...] | None = None
        self._thumb: np.ndarray | None = None  # of the last grounded frame
        self._prev: np.ndarray | None = None  # previous grey frame (flow)
        self._shape: tuple[int, ...] | None = None

    @property
    def class_agnostic(self) -> bool:
        return self.grounder.class_agnostic

    def describe(self) -> dict[str, Any]:
        """The wrapped grounder's description, plus the tracking settings when they apply."""
        d = self.grounder.describe()
        if self.config.active:
            d["tracking"] = self.config.model_dump(mode="json")
        return d

    def counters(self) -> dict[str, int]:
        return {"frames": self.frames, "grounded_frames": self.grounded,
                "scene_changes": self.scene_changes, "lost_box_frames": self.lost_frames}

    # -- per frame ----------------------------------------------------------------------------

    def ground(self, frame: np.ndarray, labels: Sequence[str]) -> list[Detection]:
        """Boxes for this frame: the real grounder's, or the last ones tracked to here."""
        self.frames += 1
        c = self.config
        if not c.active:
            self.grounded += 1
            self.last_grounded = True
            return self.grounder.ground(frame, labels)
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        thumb = thumbnail(gray)
        key = tuple(labels)
        due = (self._thumb is None or key != self._labels or gray.shape != self._shape
               or self._since + 1 >= c.every)
        if not due and scene_difference(thumb, self._thumb) > c.scene_change:
            self.scene_changes += 1
            due = True
        if due:
            dets = self.grounder.ground(frame, labels)
            self._regrounded(dets, thumb, key, gray.shape)
            out = dets
        else:
            self._since += 1
            self._advance(gray)
            out = [t.detection() for t in self._tracks]
        self._prev = gray if c.tracker == "flow" else None
        self.last_grounded = due
        return out

    def _regrounded(self, dets: list[Detection], thumb: np.ndarray, labels: tuple[str, ...],
                    shape: tuple[int, ...]) -> None:
        """New tracks from a grounding; a box overlapping a tracked one of the same label
        continues it, so it gets a velocity (anchor to anchor over the frames between)."""
        self.grounded += 1
        since = self._since + 1
        new = [Track(np.asarray(d.box, dtype=np.float64), d.label, float(d.score),
                     tuple(d.aliases)) for d in dets]
        for t in new:
            t.anchor = _centre(t.box)
        if self._tracks and new and labels == self._labels and shape == self._shape:
            iou = box_iou(np.stack([t.box for t in new]), np.stack([t.box for t in self._tracks]))
            same = np.array([[n.label == o.label for o in self._tracks] for n in new])
            iou = np.where(same, iou, 0.0)
            while True:  # greedy, best overlap first
                i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
                if iou[i, j] < MATCH_IOU:
                    break
                new[i].velocity = (new[i].anchor - self._tracks[j].anchor) / since
                iou[i, :] = 0.0
                iou[:, j] = 0.0
        self._tracks = new
        self._thumb, self._labels, self._shape, self._since = thumb, labels, shape, 0

    def _advance(self, gray: np.ndarray) -> None:
        """Move every track one frame on."""
        h, w = gray.shape[:2]
        method = self.config.tracker
        if method == "flow" and self._tracks and self._prev is not None:
            moved = self._flow(self._prev, gray)
        else:
            moved = [None] * len(self._tracks)
        keep = []
        for t, m in zip(self._tracks, moved, strict=True):
            if method == "hold":
                pass
            elif m is not None:
                shift, scale = m
                t.velocity = shift
                t.lost = 0
                c = _centre(t.box) + shift
                half = (t.box[2:] - t.box[:2]) * scale / 2
                t.box = np.concatenate([c - half, c + half])
            else:  # iou tracker, or flow points lost: constant velocity
                if method == "flow":
                    t.lost += 1
                    self.lost_frames += 1
                t.box = t.box + np.tile(t.velocity, 2)
            t.box = np.array([max(t.box[0], 0.0), max(t.box[1], 0.0),
                              min(t.box[2], float(w)), min(t.box[3], float(h))])
            if t.box[2] - t.box[0] >= 1 and t.box[3] - t.box[1] >= 1:
                keep.append(t)
        self._tracks = keep

    # -- optical flow -------------------------------------------------------------------------

    def _flow(self, prev: np.ndarray, cur: np.ndarray) -> list[tuple[np.ndarray, float] | None]:
        """Per track: (median shift, scale) from features inside its box, or None if lost."""
        h, w = prev.shape[:2]
        points, owner = [], []
        for k, t in enumerate(self._tracks):
            # the box's central part: fewer background points to pull the median to zero
            bw, bh = t.box[2] - t.box[0], t.box[3] - t.box[1]
            x0 = int(max(0, t.box[0] + 0.15 * bw))
            y0 = int(max(0, t.box[1] + 0.1 * bh))
            x1 = int(min(w, t.box[2] - 0.15 * bw))
            y1 = int(min(h, t.box[3] - 0.1 * bh))
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            p = cv2.goodFeaturesToTrack(prev[y0:y1, x0:x1], MAX_CORNERS, 0.01, 3, blockSize=3)
            if p is None:
                continue
            points.append(p.reshape(-1, 2) + (x0, y0))
            owner.append(np.full(len(p), k))
        out: list[tuple[np.ndarray, float] | None] = [None] * len(self._tracks)
        if not points:
            return out
        p0 = np.concatenate(points).astype(np.float32).reshape(-1, 1, 2)
        who = np.concatenate(owner)
        lk = {"winSize": LK_WIN, "maxLevel": LK_LEVELS}
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **lk)
        fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
        good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < FB_MAX_ERR)
        a, b = p0.reshape(-1, 2), p1.reshape(-1, 2)
        for k in range(len(self._tracks)):
            sel = good & (who == k)
            if int(sel.sum()) < MIN_POINTS:
                continue
            pa, pb = a[sel], b[sel]
            shift = np.median(pb - pa, axis=0).astype(np.float64)
            out[k] = (shift, _scale(pa, pb))
        return out


def _scale(pa: np.ndarray, pb: np.ndarray) -> float:
    """How much the points spread out (or in): ratio of their mean distance to their centroid
    after and before, clamped to a small change per frame (1.0 with too few points)."""
    if len(pa) < 4:
        return 1.0
    da = np.linalg.norm(pa - pa.mean(axis=0), axis=1).mean()
    db = np.linalg.norm(pb - pb.mean(axis=0), axis=1).mean()
    if da < 2.0:
        return 1.0
    return float(np.clip(db / da, 0.9, 1.1))
