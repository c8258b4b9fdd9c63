"""Choose grounder score thresholds by measured recall and bits on the development split.

Grounding for compression favours recall: an object the grounder misses is never sent, a false
box only costs bits. This tool measures, for each grounder and score threshold, against a
reference on frames 0-499 of OpenCV's ``vtest.avi`` (the development split, which the bundled
clip is cut from). Frames 500-794 are the held-out evaluation split: ``--start 500`` measures
there for reporting only (the tool then names no choice), never for choosing.

- **recall**: share of reference boxes matched one-to-one by a grounder box of the same class
  group (person / vehicle) with IoU >= 0.5 (greedy, highest IoU first), overall and per group;
  also against the hand-checked objects (``HAND_CHECKED``);
- **covered**: share of reference boxes whose area lies >= 90 % inside the regions actually sent
  (padded boxes of any class) -- what decides whether the object's pixels reach the sink;
- **boxes/frame**, **extra/frame** (boxes that match no reference box), **area share** (the
  union of the padded regions, as ``sdk.regions.area_share``);
- **task bpp**: bits the classical codec (``sdk.codecs.classical`` with its defaults, the real
  ``compress``) spends on the task substream, sum of region payload bytes * 8 / frame pixels;
- **ms/frame**: median wall time of ``Grounder.ground`` during the sweep (``threads`` = 2
  unless ``--threads``); only a rough guide: the sweep alternates one ONNX Runtime session per
  threshold, whose idle worker threads spin and compete, and other processes may share the
  CPU. A separate pass times the grounders at their chosen thresholds, taking turns by blocks
  of frames.

There are no human annotations for this clip, so the reference is a slower, stronger
configuration of the default detector (test-time augmentation), ``nanodet-tta``: NanoDet on the
whole frame, on 6 overlapping 384x384 tiles (about 2x the whole-frame resolution) and on 20
overlapping 208x208 tiles (about 4x), each also mirrored (62 inferences per frame). Within one
view, boxes of one class group overlapping by IoU > 0.6 are suppressed (NanoDet's NMS is per
class); tile boxes that touch an inner tile border are dropped (the object is cut; a
neighbouring tile or a coarser view sees it whole); the rest are clustered per class group
(IoU >= 0.55, score-weighted mean box, two boxes of one view never merged), and a cluster is a
reference object when its best score is >= 0.5 and at least 2 views found it. It is cached
(``--reference-cache``). ``--render`` draws reference boxes (and a grounder's boxes) on chosen
frames for checking them by eye; what that check found is in ``docs/grounder-thresholds.md``,
in ``IGNORE_REGIONS`` (a false object the reference keeps inventing, left out of recall on the
frames where it was checked) and in ``HAND_CHECKED`` (52 objects on six evaluation frames,
checked by eye: a second recall column, only on evaluation runs).

Usage (from the repository root, the project's venv; Debian ``opencv-doc`` for the clip)::

    python tools/tune_grounder.py --step 2                           # choose: dev frames 0-499
    python tools/tune_grounder.py --render 0,100,200,300,400,498 --render-grounder nanodet:0.19
    python tools/tune_grounder.py --start 500 --stop 795 --thresholds default   # held out
    python tools/tune_grounder.py --time-only nanodet:0.19,ssd-oid:0.15   # timing only

Prints a markdown table per grounder and the threshold with the fewest task bits among those
reaching ``--target-recall`` (0.95), or, when none does, among those within 0.01 of the best
recall; ``--json FILE`` writes everything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
DEV_START, DEV_STOP = 0, 500     # development split: frames 0..499 (choose here)
EVAL_START, EVAL_STOP = 500, 795  # evaluation split: frames 500..794 (report only)
PERSON, VEHICLE = 0, 1
GROUP_NAMES = ("person", "vehicle")
#: profile labels the grounders are asked for; each maps to one class group
LABELS = ("person", "bicycle", "car", "motorcycle", "bus", "truck")
_GROUP_OF_LABEL = {"person": PERSON, **{k: VEHICLE for k in LABELS[1:]}}
_NANODET_GROUPS = {"person": PERSON, "bicycle": VEHICLE, "car": VEHICLE, "motorcycle": VEHICLE,
                   "bus": VEHICLE, "truck": VEHICLE}
#: 0.05 apart, and 0.01 apart where the choices fall: on the development frames 0.3-0.4
#: (nanodet's recall crosses 0.95) and 0.2-0.25 (ssd-oid); 0.15-0.2 was that range on the
#: evaluation frames in the previous release
DEFAULT_THRESHOLDS = (0.1, 0.15, 0.16, 0.17, 0.18, 0.19, 0.2, 0.21, 0.22, 0.23, 0.24, 0.25, 0.3,
                      0.31, 0.32, 0.33, 0.34, 0.35, 0.36, 0.37, 0.38, 0.39, 0.4, 0.45, 0.5, 0.55,
                      0.6)

# nanodet-tta reference
REF_VIEW_THRESHOLD = 0.3   # per-view detection threshold (candidates)
REF_KEEP_SCORE = 0.5       # a cluster's best score must reach this ...
REF_MIN_VIEWS = 2          # ... in at least this many views
REF_CLUSTER_IOU = 0.55
REF_TILES = ((384, 0.67), (208, 0.67))  # tile side (frame pixels), max stride / side
#: Don't-care regions found by a check by eye, each with the frames it was checked on
#: (start, stop exclusive, (x0, y0, x1, y1) frame pixels); a region applies only to those
#: frames. A reference box mostly inside one is left out of recall (a grounder box matching it
#: is not counted as extra). Evaluation frames (``--start 500 --render 500,560,620,680,740,794``):
#: the blue sign post left of the car park, which NanoDet's tiles call a person (0.51-0.58, 3-6
#: views) in nearly every frame and no person ever stands on. Development frames, checked
#: separately on their own renders (``--render 0,100,200,300,400,496`` and 4,204,412,432): the
#: same sign post (122 of the 125 frames of ``--step 4``), and the camera head on the tripod in
#: the foreground (kept as a person, 0.50-0.58, in 22 of them; nobody stands there).
IGNORE_REGIONS: tuple[tuple[int, int, tuple[float, float, float, float]], ...] = (
    (DEV_START, DEV_STOP, (24, 105, 56, 148)),
    (DEV_START, DEV_STOP, (492, 330, 520, 388)),
    (EVAL_START, EVAL_STOP, (24, 105, 56, 148)),
)
_P, _V = PERSON, VEHICLE
#: Every person and vehicle visible in six evaluation frames, checked by eye on the renders
#: (``--render 500,560,620,680,740,794``): the reference's boxes less what it invents (the sign
#: post; the tripod's camera head in 560), plus what it misses, boxed by hand (560: the person
#: hidden behind another; 740: the person standing at the parked car; 794: the parked car with
#: its boot open and the person loading it). 52 objects; a second, human-checked yardstick.
HAND_CHECKED: dict[int, tuple[tuple[tuple[int, int, int, int], int], ...]] = {
    500: (((568, 277, 611, 392), _P), ((613, 275, 641, 372), _P), ((306, 188, 333, 264), _P),
          ((734, 52, 768, 94), _V), ((651, 43, 725, 100), _V), ((556, 239, 595, 338), _P)),
    560: (((584, 159, 616, 234), _P), ((641, 305, 672, 410), _P), ((379, 155, 410, 236), _P),
          ((82, 171, 108, 237), _P), ((734, 52, 768, 94), _V), ((175, 364, 246, 537), _P),
          ((651, 43, 724, 100), _V), ((171, 354, 235, 496), _P)),
    620: (((65, 179, 100, 248), _P), ((578, 262, 619, 366), _P), ((457, 174, 493, 254), _P),
          ((612, 296, 656, 398), _P), ((122, 140, 145, 208), _P), ((734, 52, 768, 94), _V),
          ((373, 423, 431, 575), _P), ((651, 43, 724, 100), _V)),
    680: (((273, 158, 304, 238), _P), ((449, 242, 481, 343), _P), ((487, 170, 514, 241), _P),
          ((387, 149, 406, 212), _P), ((516, 157, 538, 230), _P), ((167, 156, 204, 224), _P),
          ((151, 330, 201, 448), _P), ((734, 50, 768, 94), _V), ((651, 43, 724, 100), _V)),
    740: (((566, 219, 614, 318), _P), ((340, 203, 372, 287), _P), ((14, 169, 45, 235), _P),
          ((266, 196, 300, 278), _P), ((556, 183, 585, 255), _P), ((127, 217, 158, 299), _P),
          ((623, 115, 648, 173), _P), ((441, 185, 467, 269), _P), ((734, 51, 768, 97), _V),
          ((651, 44, 724, 100), _V), ((742, 56, 756, 97), _P)),
    794: (((617, 266, 656, 376), _P), ((654, 147, 676, 215), _P), ((214, 159, 240, 227), _P),
          ((435, 276, 485, 381), _P), ((644, 232, 677, 336), _P), ((236, 189, 265, 263), _P),
          ((387, 166, 422, 234), _P), ((651, 43, 725, 100), _V), ((732, 49, 768, 96), _V),
          ((753, 60, 768, 96), _P)),
}
REF_VERSION = 3            # bump when the reference method changes (invalidates caches)


# -- frames -----------------------------------------------------------------------------------

def read_frames(video: Path, start: int, stop: int, step: int) -> Iterator[tuple[int, np.ndarray]]:
    if not video.is_file():
        sys.exit(f"error: {video} not found; install it with `apt-get update -qq; apt-get install "
                 "-y -qq opencv-doc` or pass --video")
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        sys.exit(f"error: OpenCV cannot open {video}")
    try:
        index = 0
        while index < stop:  # decode sequentially: seeking in MJPEG/DivX AVIs is not exact
            ok, frame = cap.read()
            if not ok:
                break
            if index >= start and (index - start) % step == 0:
                yield index, frame
            index += 1
    finally:
        cap.release()


# -- geometry ---------------------------------------------------------------------------------

def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) boxes -> (N, M) IoU."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    w = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]))
    h = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]))
    inter = w.clip(0) * h.clip(0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match(ref_boxes: np.ndarray, ref_groups: np.ndarray, boxes: np.ndarray, groups: np.ndarray,
          min_iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching, highest IoU first, same group only; returns a bool per
    reference box (matched or not) and one per box (used or not)."""
    iou = iou_matrix(ref_boxes, boxes)
    iou[ref_groups[:, None] != groups[None, :]] = 0
    matched = np.zeros(len(ref_boxes), bool)
    used = np.zeros(len(boxes), bool)
    for flat in np.argsort(-iou, axis=None):
        r, d = divmod(int(flat), iou.shape[1])
        if iou[r, d] < min_iou:
            break
        if not matched[r] and not used[d]:
            matched[r] = used[d] = True
    return matched, used


# -- reference: NanoDet with test-time augmentation -------------------------------------------

def tta_views(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The whole frame, then overlapping square tiles of each size in REF_TILES."""
    views = [(0, 0, width, height)]
    for side, max_stride in REF_TILES:
        def starts(extent: int, side: int = side, max_stride: float = max_stride) -> np.ndarray:
            if extent <= side:
                return np.zeros(1, int)
            n = int(np.ceil((extent - side) / (side * max_stride))) + 1
            return np.linspace(0, extent - side, n).round().astype(int)
        views += [(int(x), int(y), int(x) + min(side, width), int(y) + min(side, height))
                  for y in starts(height) for x in starts(width)]
    return views


def nanodet_tta(model, frame: np.ndarray) -> list[dict]:
    """Reference objects of one frame: [{box, group, score, views}] (see module doc)."""
    from discover.sdk.models.nanodet import COCO80_LABELS

    group_of = {COCO80_LABELS.index(k): g for k, g in _NANODET_GROUPS.items()}
    h, w = frame.shape[:2]
    cands = []  # (box, score, group, view id)
    for vi, (x0, y0, x1, y1) in enumerate(tta_views(w, h)):
        crop = frame[y0:y1, x0:x1]
        cw, ch = x1 - x0, y1 - y0
        for flip in (False, True):
            img = np.ascontiguousarray(crop[:, ::-1]) if flip else crop
            d = model.detect(img, score_threshold=REF_VIEW_THRESHOLD)
            in_view: list[tuple[np.ndarray, float, int]] = []
            for box, score, cls in zip(d.boxes, d.scores, d.class_ids, strict=True):
                g = group_of.get(int(cls))
                if g is None:
                    continue
                b = box.astype(np.float64)
                # the detector's NMS is per class: a van found as car and as truck is one
                # vehicle, so suppress within the class group as well (same IoU, 0.6)
                if any(vg == g and iou_matrix(vb[None], b[None])[0, 0] > 0.6
                       for vb, _, vg in in_view):
                    continue
                in_view.append((b, float(score), g))
            for b, score, g in in_view:
                b = b.copy()
                if flip:
                    b[[0, 2]] = cw - b[[2, 0]]
                cut = ((b[0] <= 2 and x0 > 0) or (b[1] <= 2 and y0 > 0)
                       or (b[2] >= cw - 2 and x1 < w) or (b[3] >= ch - 2 and y1 < h))
                if cut:
                    continue
                cands.append((b + [x0, y0, x0, y0], score, g, 2 * vi + int(flip)))
    cands.sort(key=lambda c: -c[1])
    clusters: list[dict] = []
    for box, score, g, view in cands:
        best, best_iou = None, REF_CLUSTER_IOU
        for c in clusters:
            # two boxes one view kept apart (after its own NMS) are two objects: never merge them
            if c["group"] == g and all(m[2] != view for m in c["members"]):
                o = float(iou_matrix(c["box"][None], box[None])[0, 0])
                if o >= best_iou:
                    best, best_iou = c, o
        if best is None:
            clusters.append({"group": g, "box": box, "members": [(box, score, view)]})
        else:
            best["members"].append((box, score, view))
            ws = np.array([m[1] for m in best["members"]])
            best["box"] = (np.stack([m[0] for m in best["members"]]) * ws[:, None]).sum(0) / ws.sum()
    out = []
    for c in clusters:
        score = max(m[1] for m in c["members"])
        views = len({m[2] for m in c["members"]})
        out.append({"box": [round(float(v), 1) for v in c["box"]], "group": c["group"],
                    "score": round(score, 4), "views": views,
                    "kept": score >= REF_KEEP_SCORE and views >= REF_MIN_VIEWS})
    return out


def reference_key(video: Path, frames: Sequence[int]) -> str:
    from discover.sdk.models.nanodet import DEFAULT_WEIGHTS

    h = hashlib.sha256()
    h.update(json.dumps([REF_VERSION, str(video), video.stat().st_size, list(frames),
                         REF_VIEW_THRESHOLD, REF_KEEP_SCORE, REF_MIN_VIEWS, REF_CLUSTER_IOU,
                         REF_TILES]).encode())
    h.update(hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).digest())
    return h.hexdigest()[:16]


def build_reference(video: Path, frames: Sequence[int], step: int, cache: Path | None,
                    threads: int) -> dict[int, list[dict]]:
    key = reference_key(video, frames)
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return {int(k): v for k, v in data["frames"].items()}
        print(f"reference cache {cache} is for other settings; rebuilding", file=sys.stderr)
    from discover.sdk.models.nanodet import NanoDet

    model = NanoDet(intra_op_num_threads=threads)
    out: dict[int, list[dict]] = {}
    t0 = time.perf_counter()
    for n, (index, frame) in enumerate(read_frames(video, frames[0], frames[-1] + 1, step), 1):
        out[index] = nanodet_tta(model, frame)
        if n % 25 == 0 or n == len(frames):
            print(f"reference: {n}/{len(frames)} frames, "
                  f"{(time.perf_counter() - t0) / n:.2f} s/frame", file=sys.stderr, flush=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "method": "nanodet-tta", "frames": out}))
    return out


def kept(ref: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    objs = [r for r in ref if r["kept"]]
    return (np.array([r["box"] for r in objs], np.float32).reshape(-1, 4),
            np.array([r["group"] for r in objs], np.int64))


Ignore = Sequence[tuple[int, int, Sequence[float]]]  # (start, stop, box) as IGNORE_REGIONS


def ignore_at(index: int, ignore: Ignore) -> list[Sequence[float]]:
    """The don't-care boxes that apply to frame ``index``."""
    return [box for start, stop, box in ignore if start <= index < stop]


def ignored(boxes: np.ndarray, regions: Sequence[Sequence[float]]) -> np.ndarray:
    """Bool per box: at least half of its area inside one of the don't-care regions."""
    out = np.zeros(len(boxes), bool)
    for x0, y0, x1, y1 in regions:
        w = (np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0)).clip(0)
        h = (np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0)).clip(0)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clip(1e-9)
        out |= w * h >= 0.5 * area
    return out


# -- evaluation -------------------------------------------------------------------------------

def make_grounder(key: str, threshold: float | None, threads: int):
    """The registered grounder ``key`` (its configured threshold when ``threshold`` is None)."""
    import discover.sdk.grounders.ssd_oid  # noqa: F401  (registers ssd-oid until the package imports it)
    from discover.sdk.grounders import GROUNDERS

    config = {"type": key, "threads": threads}
    if threshold is not None:
        config["score_threshold"] = threshold
    return GROUNDERS.create(config)


def detection_group(det) -> int | None:
    for name in (det.label, *det.aliases):
        g = _GROUP_OF_LABEL.get(name)
        if g is not None:
            return g
    return None


def evaluate(key: str, thresholds: Sequence[float], video: Path, frames: Sequence[int],
             step: int, reference: dict[int, list[dict]], threads: int,
             ignore: Ignore = IGNORE_REGIONS, dedupe: float = 0.0
             ) -> list[dict]:
    from discover.sdk.codecs import CODECS
    from discover.sdk.regions import Region, area_share, pad_and_clip

    codec = CODECS.create("classical")
    grounders = {t: make_grounder(key, t, threads) for t in thresholds}
    acc = {t: {"ref": np.zeros(2), "hit": np.zeros(2), "covered": 0, "boxes": 0, "extra": 0,
               "area": 0.0, "bits": 0.0, "ms": [], "ref_all": 0, "hit_all": 0,
               "hand": 0, "hand_hit": 0}
           for t in thresholds}
    n_frames = 0
    for index, frame in read_frames(video, frames[0], frames[-1] + 1, step):
        n_frames += 1
        h, w = frame.shape[:2]
        ref_boxes, ref_groups = kept(reference[index])
        frame_ignore = ignore_at(index, ignore)
        care = ~ignored(ref_boxes, frame_ignore)
        for t, grounder in grounders.items():
            a = acc[t]
            t0 = time.perf_counter()
            dets = grounder.ground(frame, LABELS)
            a["ms"].append((time.perf_counter() - t0) * 1000)
            dets = [d for d in dets if detection_group(d) is not None]
            if dedupe > 0:  # what-if: one box per object across classes of a group
                dets = dedupe_groups(dets, dedupe)
            boxes = np.array([d.box for d in dets], np.float32).reshape(-1, 4)
            groups = np.array([detection_group(d) for d in dets], np.int64)
            hit, used = match(ref_boxes, ref_groups, boxes, groups)
            a["ref_all"] += len(hit)
            a["hit_all"] += int(hit.sum())
            for g in (PERSON, VEHICLE):
                a["ref"][g] += int((care & (ref_groups == g)).sum())
                a["hit"][g] += int(hit[care & (ref_groups == g)].sum())
            a["boxes"] += len(dets)
            a["extra"] += int((~used & ~ignored(boxes, frame_ignore)).sum())
            if index in HAND_CHECKED:
                hand = HAND_CHECKED[index]
                hit_hand, _ = match(np.array([b for b, _ in hand], np.float32),
                                    np.array([g for _, g in hand], np.int64), boxes, groups)
                a["hand"] += len(hand)
                a["hand_hit"] += int(hit_hand.sum())
            regions = []
            for d in sorted(dets, key=lambda d: -d.score):
                box = pad_and_clip(d.box, grounder.config.margin, w, h, codec.align)
                if box is not None:
                    regions.append(Region(len(regions), box, d.label, d.score))
            a["area"] += area_share(regions, w, h)
            coded = codec.compress(frame, regions, send_rest=False)
            a["bits"] += sum(len(b) for b in coded["regions"].values()) * 8 / (w * h)
            mask = np.zeros((h, w), bool)
            for r in regions:
                mask[r.box[1]:r.box[3], r.box[0]:r.box[2]] = True
            for rb in ref_boxes[care].round().astype(int):
                x0, y0, x1, y1 = np.clip(rb, 0, [w, h, w, h])
                if x1 > x0 and y1 > y0 and mask[y0:y1, x0:x1].mean() >= 0.9:
                    a["covered"] += 1
        if n_frames % 50 == 0:
            print(f"{key}: {n_frames}/{len(frames)} frames", file=sys.stderr, flush=True)
    rows = []
    for t in thresholds:
        a = acc[t]
        n_ref = a["ref"].sum()
        rows.append({
            "grounder": key, "threshold": t, "frames": n_frames, "reference_boxes": int(n_ref),
            "recall": float(a["hit"].sum() / max(n_ref, 1)),
            "recall_person": float(a["hit"][PERSON] / max(a["ref"][PERSON], 1)),
            "recall_vehicle": float(a["hit"][VEHICLE] / max(a["ref"][VEHICLE], 1)),
            "recall_no_ignore": a["hit_all"] / max(a["ref_all"], 1),
            "hand_checked": a["hand"], "recall_hand_checked": a["hand_hit"] / a["hand"] if a["hand"] else None,
            "covered": a["covered"] / max(n_ref, 1),
            "boxes_per_frame": a["boxes"] / n_frames, "extra_per_frame": a["extra"] / n_frames,
            "area_share": a["area"] / n_frames, "task_bpp": a["bits"] / n_frames,
            "ms_per_frame": float(np.median(a["ms"])),
        })
    return rows


def time_grounders(specs: dict[str, float], video: Path, frames: Sequence[int], threads: int,
                   block: int = 10) -> dict[str, dict]:
    """ms per ``ground`` call for each KEY at its threshold: the grounders take turns by blocks
    of ``block`` frames (so load from other processes hits them alike), and the first call of a
    block is not counted (ONNX Runtime's worker threads of the previous session may still be
    spinning and would steal a core from this one on a 2-core machine). Median and p90."""
    grounders = {k: make_grounder(k, t, threads) for k, t in specs.items()}
    times: dict[str, list[float]] = {k: [] for k in grounders}
    step = max(1, len(frames) // 60)
    chunk: list[np.ndarray] = []

    def run_chunk(n: int) -> None:
        order = list(grounders) if n % 2 else list(grounders)[::-1]
        for k in order:
            grounders[k].ground(chunk[0], LABELS)  # warm-up, not counted
            for frame in chunk:
                t0 = time.perf_counter()
                grounders[k].ground(frame, LABELS)
                times[k].append((time.perf_counter() - t0) * 1000)

    n_chunks = 0
    for index, frame in read_frames(video, frames[0], frames[-1] + 1, 1):
        if (index - frames[0]) % step:
            continue
        chunk.append(frame)
        if len(chunk) == block:
            run_chunk(n_chunks)
            n_chunks += 1
            chunk = []
    if chunk:
        run_chunk(n_chunks)
    return {k: {"threshold": specs[k], "calls": len(v), "ms_median": float(np.median(v)),
                "ms_p90": float(np.percentile(v, 90))} for k, v in times.items()}


def dedupe_groups(dets: list, iou: float) -> list:
    """Drop a box that overlaps a higher-scoring box of the same class group by IoU > ``iou``
    (NanoDet's NMS is per class, so one van comes out as truck, bus and car)."""
    kept_dets: list = []
    for d in sorted(dets, key=lambda d: -d.score):
        b = np.array([d.box], np.float32)
        g = detection_group(d)
        if not any(detection_group(k) == g and iou_matrix(b, np.array([k.box], np.float32))[0, 0]
                   > iou for k in kept_dets):
            kept_dets.append(d)
    return kept_dets


def choose(rows: list[dict], target: float, margin: float = 0.01) -> tuple[dict, bool]:
    """Fewest task bits among thresholds reaching the target recall; when none does, fewest
    task bits among those within ``margin`` of the best recall. Returns (row, target reached)."""
    ok = [r for r in rows if r["recall"] >= target]
    if not ok:
        best = max(r["recall"] for r in rows)
        ok = [r for r in rows if r["recall"] >= best - margin]
    return min(ok, key=lambda r: (r["task_bpp"], -r["threshold"])), ok[0]["recall"] >= target


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(rows: list[dict]) -> str:
    head = ("| threshold | recall | person | vehicle | recall (no don't-care) "
            f"| hand-checked recall ({rows[0]['hand_checked']}) | covered "
            "| boxes/frame | extra/frame | area share | task bpp | ms/frame |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['threshold']:.2f} | {r['recall']:.3f} | {r['recall_person']:.3f} | "
                     f"{r['recall_vehicle']:.3f} | {r['recall_no_ignore']:.3f} | "
                     f"{_fmt(r['recall_hand_checked'])} | "
                     f"{r['covered']:.3f} | "
                     f"{r['boxes_per_frame']:.1f} | {r['extra_per_frame']:.1f} | "
                     f"{r['area_share']:.3f} | {r['task_bpp']:.4f} | {r['ms_per_frame']:.1f} |")
    return "\n".join(lines)


# -- rendering for the check by eye -----------------------------------------------------------

def render(video: Path, indices: Sequence[int], reference: dict[int, list[dict]], out_dir: Path,
           grounder_spec: str | None, threads: int,
           ignore: Ignore = ()) -> list[Path]:
    grounder = None
    if grounder_spec:
        key, _, thr = grounder_spec.partition(":")
        grounder = make_grounder(key, float(thr or 0.3), threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(indices)
    paths = []
    for index, frame in read_frames(video, min(wanted), max(wanted) + 1, 1):
        if index not in wanted:
            continue
        img = frame.copy()
        for x0, y0, x1, y1 in ignore_at(index, ignore):  # don't-care regions: dashed-looking magenta
            cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), (255, 0, 255), 1,
                          cv2.LINE_4)
        if grounder is not None:  # grounder boxes: thin white
            for d in grounder.ground(frame, LABELS):
                x0, y0, x1, y1 = (int(round(v)) for v in d.box)
                cv2.rectangle(img, (x0, y0), (x1, y1), (255, 255, 255), 1)
        for n, r in enumerate(reference.get(index, [])):
            if not r["kept"] and r["score"] < 0.4:
                continue  # weak rejected candidates would clutter the picture
            x0, y0, x1, y1 = (int(round(v)) for v in r["box"])
            color = ((0, 255, 0) if r["group"] == PERSON else (255, 160, 0)) if r["kept"] \
                else (0, 0, 255)  # kept person green, kept vehicle blue, rejected red
            cv2.rectangle(img, (x0, y0), (x1, y1), color, 1)
            cv2.putText(img, f"{n}:{r['score']:.2f}/{r['views']}", (x0, max(8, y0 - 2)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.3, color, 1, cv2.LINE_AA)
        big = cv2.resize(img, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_LINEAR)
        cv2.putText(big, f"frame {index}", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 2, cv2.LINE_AA)
        path = out_dir / f"reference_{index:04d}.png"
        cv2.imwrite(str(path), big)
        paths.append(path)
    return paths


def sweep(key: str, args: argparse.Namespace, frames: Sequence[int],
          reference: dict[int, list[dict]], ignore: Ignore, held_out: bool) -> dict:
    """Evaluate one grounder at each threshold, print its table and (development frames only)
    the threshold the rule chooses."""
    if args.thresholds.strip().lower() == "default":
        thresholds = [make_grounder(key, None, args.threads).config.score_threshold]
    else:
        thresholds = [float(v) for v in args.thresholds.split(",") if v.strip()]
    rows = evaluate(key, thresholds, args.video, frames, args.step, reference, args.threads,
                    ignore, args.dedupe)
    print(f"\n### {key}\n\n{table(rows)}\n")
    if held_out:
        return {"rows": rows, "choice": None}
    best, reached = choose(rows, args.target_recall)
    if not reached:
        top = max(rows, key=lambda r: r["recall"])
        print(f"{key}: no threshold reaches recall {args.target_recall}; the best is "
              f"{top['recall']:.3f} at {top['threshold']:g}; the fewest bits within 0.01 of it:")
    print(f"{key}: choose score_threshold {best['threshold']:g} (recall "
          f"{best['recall']:.3f}, {best['task_bpp']:.4f} task bpp)")
    return {"rows": rows, "choice": best, "target_reached": reached}


def parse_ignore(text: str) -> list[tuple[int, int, tuple[float, ...]]]:
    """``--ignore``: 'auto' (IGNORE_REGIONS), 'none', or boxes 'x0,y0,x1,y1;...' on all frames."""
    text = text.strip().lower()
    if text == "auto":
        return list(IGNORE_REGIONS)
    if text in ("", "none"):
        return []
    try:
        boxes = [tuple(float(v) for v in r.split(",")) for r in text.split(";") if r.strip()]
    except ValueError:
        boxes = [()]
    if any(len(b) != 4 for b in boxes):
        sys.exit("error: --ignore wants 'auto', 'none' or 'x0,y0,x1,y1' regions separated by ';'")
    return [(0, sys.maxsize, b) for b in boxes]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, default=VIDEO)
    ap.add_argument("--start", type=int, default=DEV_START,
                    help=f"first frame (default {DEV_START}: the development split; "
                         f"{EVAL_START} and on is held out: figures for reporting, no choice)")
    ap.add_argument("--stop", type=int, help=f"exclusive (default {DEV_STOP}, or {EVAL_STOP} "
                    f"from --start {EVAL_START} on)")
    ap.add_argument("--step", type=int, default=1, help="use every STEP-th frame")
    ap.add_argument("--grounders", default="nanodet,ssd-oid")
    ap.add_argument("--thresholds", default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS),
                    help="comma-separated, or 'default': each grounder's configured default")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--reference-cache", type=Path,
                    help="default: out/tune-dev/reference.json for development frames, "
                         "out/tune-eval/reference.json when the run reaches held-out frames")
    ap.add_argument("--render", default="", help="comma-separated frame indices to draw")
    ap.add_argument("--render-dir", type=Path, help="default: beside the reference cache")
    ap.add_argument("--render-grounder", help="also draw KEY:THRESHOLD's boxes (white)")
    ap.add_argument("--ignore", default="auto",
                    help="don't-care regions 'x0,y0,x1,y1;...' for every frame, 'none', or "
                         "'auto' (default): IGNORE_REGIONS, each on the frames it was checked on")
    ap.add_argument("--json", type=Path, help="write the rows and choices here")
    ap.add_argument("--no-timing", dest="timing", action="store_false",
                    help="skip the timing pass at the chosen thresholds")
    ap.add_argument("--dedupe", type=float, default=0.0, metavar="IOU",
                    help="what-if: before matching and coding, drop boxes that overlap a "
                         "higher-scoring box of the same class group by IoU > IOU (0: off)")
    ap.add_argument("--time-only", metavar="KEY:THR,...",
                    help="only time these grounders (in turns) and exit; no reference needed")
    args = ap.parse_args(argv)

    if args.stop is None:
        args.stop = DEV_STOP if args.start < DEV_STOP else EVAL_STOP
    if args.step < 1 or args.start < 0 or args.stop <= args.start:
        sys.exit("error: need 0 <= --start < --stop and --step >= 1")
    if not args.video.is_file():
        sys.exit(f"error: {args.video} not found; install it with `apt-get update -qq; "
                 "apt-get install -y -qq opencv-doc` or pass --video")
    ignore = parse_ignore(args.ignore)
    held_out = args.stop > EVAL_START
    if args.reference_cache is None:
        args.reference_cache = REPO_ROOT / "out" / ("tune-eval" if held_out else "tune-dev") \
            / "reference.json"
    args.render_dir = args.render_dir or args.reference_cache.parent
    cv2.setNumThreads(1)  # keep the codec from competing with the grounder's threads
    frames = list(range(args.start, args.stop, args.step))
    if args.time_only:
        pairs = [x.partition(":") for x in args.time_only.split(",") if x.strip()]
        specs = {k.strip(): float(t or 0.3) for k, _, t in pairs}
        if len(specs) != len(pairs):
            sys.exit("error: --time-only takes each grounder once")
        load = os.getloadavg()[0]
        timing = time_grounders(specs, args.video, frames, args.threads)
        print(f"timing, blocks of 10 frames in turn, {args.threads} threads, {os.cpu_count()} CPUs, load "
              f"{load:.1f} -> {os.getloadavg()[0]:.1f}:")
        for k, v in timing.items():
            print(f"  {k} @ {v['threshold']:g}: {v['ms_median']:.1f} ms median, "
                  f"{v['ms_p90']:.1f} ms p90 per frame ({v['calls']} calls)")
        return 0
    reference = build_reference(args.video, frames, args.step, args.reference_cache, args.threads)
    frames = [f for f in frames if f in reference]  # the clip may be shorter than --stop
    if not frames:
        sys.exit(f"error: {args.video} has no frames from {args.start} on")
    n_ref = sum(len(kept(reference[f])[1]) for f in frames)
    per_group = [sum(int((kept(reference[f])[1] == g).sum()) for f in frames) for g in (0, 1)]
    n_ignored = sum(int(ignored(kept(reference[f])[0], ignore_at(f, ignore)).sum())
                    for f in frames)
    print(f"reference nanodet-tta: {len(frames)} frames ({args.start}..{frames[-1]}, step "
          f"{args.step}), {n_ref} objects ({per_group[0]} person, {per_group[1]} vehicle), "
          f"{n_ref / len(frames):.1f} per frame; {n_ignored} in don't-care regions {ignore}")
    if args.render:
        idx = [int(v) for v in args.render.split(",") if v.strip()]
        for p in render(args.video, idx, reference, args.render_dir, args.render_grounder,
                        args.threads, ignore):
            print(f"rendered {p}")

    results: dict = {"video": str(args.video), "frames": [frames[0], frames[-1], args.step],
                     "split": "evaluation (reporting only)" if held_out else "development",
                     "reference": {"method": "nanodet-tta", "objects": n_ref,
                                   "person": per_group[0], "vehicle": per_group[1],
                                   "ignore_regions": ignore, "ignored_objects": n_ignored},
                     "target_recall": args.target_recall, "grounders": {}}
    if held_out:
        print(f"frames from {EVAL_START} on are the held-out evaluation split: figures for "
              "reporting only, no threshold is chosen on them")
    for key in [k.strip() for k in args.grounders.split(",") if k.strip()]:
        results["grounders"][key] = sweep(key, args, frames, reference, ignore, held_out)
    specs = {k: (v["choice"] or max(v["rows"], key=lambda r: r["recall"]))["threshold"]
             for k, v in results["grounders"].items()}
    if specs and args.timing:
        load = os.getloadavg()[0]
        timing = time_grounders(specs, args.video, frames, args.threads)
        results["timing"] = {"threads": args.threads, "load_avg_1min_before": load,
                             "load_avg_1min_after": os.getloadavg()[0], "cpus": os.cpu_count(),
                             "grounders": timing}
        print(f"\ntiming, blocks of 10 frames in turn, {args.threads} threads, {os.cpu_count()} CPUs, load "
              f"{load:.1f} -> {os.getloadavg()[0]:.1f}:")
        for k, v in timing.items():
            print(f"  {k} @ {v['threshold']:g}: {v['ms_median']:.1f} ms median, "
                  f"{v['ms_p90']:.1f} ms p90 per frame ({v['calls']} calls)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
