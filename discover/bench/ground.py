"""``discover bench ground``: how fast each grounder runs at native resolution, alone and with
tracking (``sdk/tracking.py``) at K = 2, 5, 10, and how well the tracked boxes agree with
grounding every frame.

For every grounder available offline (``motion``, ``nanodet``; ``grounding-dino`` only where
its weights are present, else skipped with the reason), on the same decoded frames held in
memory (so decoding is not timed), with the ``detection`` profile's labels:

* **alone**: the grounder on every frame; its boxes are the reference;
* **tracked**: :class:`~sdk.tracking.TrackingGrounder` with ``every = K`` for each tracker
  (``flow``, ``iou``, and ``hold`` as the do-nothing baseline); frames per second over the
  whole run (groundings + tracking), the median ms of a grounded and of a tracked frame
  (``track_ms``: what tracking costs), and the **agreement**: COCO mAP@0.5 (and @[.5:.95]) of
  the tracked boxes against the every-frame boxes (``sdk/metrics.py``). 1.0 means tracking
  changed nothing; the gap to ``hold`` is what tracking buys.

Each pass builds a fresh grounder and warms it up on the first frame, untimed (stateful
grounders such as ``motion`` see that frame twice, in every pass alike); each run is timed
``REPEATS`` times and the fastest pass counts, since the machine may be busy. Default source: the
bundled clip; ``--source .../vtest.avi --start 500`` runs on the evaluation split.
Writes ``<out>/ground.json`` and ``<out>/ground.png`` (fps against agreement per grounder,
drawn with OpenCV) and returns a summary.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from discover.progress import Progress
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.errors import DiscoverError
from discover.sdk.grounders import GROUNDERS, Grounder
from discover.sdk.metrics import coco_map
from discover.sdk.regions import Detection
from discover.sdk.tracking import TrackingConfig, TrackingGrounder

GROUNDER_KEYS = ("motion", "nanodet", "grounding-dino")
EVERY = (2, 5, 10)
TRACKERS = ("flow", "iou", "hold")
TASK = "detection"
REPEATS = 3  #: timed passes per run; the fastest counts


def load_frames(source: str, start: int, max_frames: int | None) -> tuple[list[np.ndarray], float]:
    """Decode frames ``start`` .. ``start + max_frames`` into memory; also the nominal fps."""
    from discover.edge.sources import open_source

    if start < 0:
        raise DiscoverError(f"--start must be 0 or more (got {start})")
    if max_frames is not None and max_frames < 1:
        raise DiscoverError(f"--max-frames must be at least 1 (got {max_frames})")
    src = open_source(source)
    frames: list[np.ndarray] = []
    try:
        for i, img in enumerate(src.frames()):
            if i < start:
                continue
            frames.append(img)
            if max_frames is not None and len(frames) >= max_frames:
                break
    finally:
        src.close()
    if not frames:
        raise DiscoverError(f"{source!r} has no frames from --start {start} on; pick a smaller "
                            "--start")
    return frames, src.fps


def _make(key: str) -> Grounder:
    return GROUNDERS.create({"type": key})


def _as_preds(dets: Sequence[Detection]) -> list[tuple[Any, str, float]]:
    return [(d.box, d.label, d.score) for d in dets]


def _timed_run(key: str, frames: list[np.ndarray], labels: list[str], tracking: TrackingConfig,
               repeats: int = REPEATS,
               ) -> tuple[list[list[Detection]], dict[str, float], TrackingGrounder]:
    """Passes over the frames, each with a fresh, warmed-up grounder: the first pass's boxes
    and wrapper, and the fastest pass's timings (the machine may be busy with other work):
    total seconds, median ms of a grounded frame and of a tracked one."""
    best: dict[str, float] = {"s": float("inf")}
    first = None
    for _ in range(max(1, repeats)):
        grounder = _make(key)
        grounder.ground(frames[0], labels)  # warm-up (ONNX session, caches), not timed
        tg = TrackingGrounder(grounder, tracking)
        out, grounded, tracked = [], [], []
        for f in frames:
            t0 = time.perf_counter()
            out.append(tg.ground(f, labels))
            (grounded if tg.last_grounded else tracked).append(time.perf_counter() - t0)
        total = sum(grounded) + sum(tracked)
        if total < best["s"]:
            best = {"s": total, "ground_ms": 1000 * float(np.median(grounded)),
                    "track_ms": 1000 * float(np.median(tracked)) if tracked else 0.0}
        if first is None:
            first = (out, tg)
    assert first is not None
    return first[0], best, first[1]


def bench_grounder(key: str, frames: list[np.ndarray], labels: list[str],
                   every: Sequence[int] = EVERY, trackers: Sequence[str] = TRACKERS,
                   prog: Progress | None = None, repeats: int = REPEATS) -> dict[str, Any]:
    """fps alone, and fps + agreement for each (K, tracker)."""
    n = len(frames)
    ref, tm, _ = _timed_run(key, frames, labels, TrackingConfig(), repeats)
    refs = [[(d.box, d.label) for d in ds] for ds in ref]
    fps_alone = n / tm["s"]
    res: dict[str, Any] = {"fps": round(fps_alone, 2), "ground_ms": round(tm["ground_ms"], 2),
                           "boxes_per_frame": round(sum(map(len, ref)) / n, 2), "tracked": []}
    for k in every:
        for tracker in trackers:
            if prog is not None:
                prog.update(f"{key}: every {k}, {tracker}", force=True)
            boxes, tm, tg = _timed_run(key, frames, labels,
                                       TrackingConfig(every=k, tracker=tracker), repeats)
            m = coco_map([_as_preds(ds) for ds in boxes], refs)
            res["tracked"].append({
                "every": k, "tracker": tracker, "fps": round(n / tm["s"], 2),
                "speedup": round((n / tm["s"]) / fps_alone, 2),
                "ground_ms": round(tm["ground_ms"], 2), "track_ms": round(tm["track_ms"], 2),
                "agreement_map50": round(m["map_50"], 4),
                "agreement_map50_95": round(m["map_50_95"], 4),
                **{k2: v for k2, v in tg.counters().items() if k2 != "frames"}})
    return res


# -- plot ---------------------------------------------------------------------------------------

COLOURS = {"motion": (40, 120, 230), "nanodet": (200, 90, 30), "grounding-dino": (60, 160, 60)}


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """fps (log x) against agreement mAP@0.5: one line per grounder and tracker, K marked."""
    w, h, ml, mr, mt, mb = 900, 560, 80, 190, 50, 60
    img = np.full((h, w, 3), 255, np.uint8)
    pts = [(r["fps"], 1.0) for r in results.values()]
    pts += [(t["fps"], t["agreement_map50"]) for r in results.values() for t in r["tracked"]]
    if not pts:
        return
    lo = 10 ** np.floor(np.log10(max(min(p[0] for p in pts), 1e-3)))
    hi = 10 ** np.ceil(np.log10(max(max(p[0] for p in pts), lo * 10)))
    y_lo = max(0.0, np.floor(min(p[1] for p in pts) * 10) / 10 - 0.1)

    def xy(fps: float, ap: float) -> tuple[int, int]:
        x = ml + (np.log10(fps) - np.log10(lo)) / (np.log10(hi) - np.log10(lo)) * (w - ml - mr)
        y = h - mb - (ap - y_lo) / (1.0 - y_lo) * (h - mt - mb)
        return int(round(x)), int(round(y))

    font, grey = cv2.FONT_HERSHEY_SIMPLEX, (150, 150, 150)
    cv2.rectangle(img, (ml, mt), (w - mr, h - mb), (0, 0, 0), 1)
    dec = lo
    while dec <= hi * 1.0001:
        for m in (1, 2, 5):
            v = dec * m
            if lo <= v <= hi * 1.0001:
                x, _ = xy(v, y_lo)
                cv2.line(img, (x, mt), (x, h - mb), (225, 225, 225), 1)
                cv2.putText(img, f"{v:g}", (x - 10, h - mb + 18), font, 0.4, (0, 0, 0), 1)
        dec *= 10
    for ap in np.arange(y_lo, 1.0001, 0.1 if 1 - y_lo > 0.35 else 0.05):
        _, y = xy(lo, ap)
        cv2.line(img, (ml, y), (w - mr, y), (225, 225, 225), 1)
        cv2.putText(img, f"{ap:.2f}", (ml - 45, y + 4), font, 0.4, (0, 0, 0), 1)
    cv2.putText(img, "frames per second (log)", (ml + 220, h - 20), font, 0.5, (0, 0, 0), 1)
    cv2.putText(img, "agreement mAP@0.5", (8, mt - 15), font, 0.5, (0, 0, 0), 1)
    cv2.putText(img, title, (ml + 120, 25), font, 0.5, (0, 0, 0), 1)
    legend_y = mt + 10
    for key, r in results.items():
        base = COLOURS.get(key, (0, 0, 0))
        for tracker, style in (("flow", 2), ("iou", 1), ("hold", 1)):
            fade = {"flow": 0.0, "iou": 0.45, "hold": 0.7}[tracker]  # lighter: less work
            col = tuple(int(c + (255 - c) * fade) for c in base)
            line = [xy(r["fps"], 1.0)] + [xy(t["fps"], t["agreement_map50"])
                                          for t in r["tracked"] if t["tracker"] == tracker]
            if len(line) < 2:
                continue
            cv2.polylines(img, [np.array(line, np.int32)], False, col, style, cv2.LINE_AA)
            for (x, y), t in zip(line[1:], [t for t in r["tracked"] if t["tracker"] == tracker],
                                 strict=True):
                cv2.circle(img, (x, y), 4, col, -1, cv2.LINE_AA)
                if tracker == "flow":
                    cv2.putText(img, f"K={t['every']}", (x + 5, y - 6), font, 0.4, col, 1)
            cv2.line(img, (w - mr + 12, legend_y), (w - mr + 40, legend_y), col, style + 1)
            cv2.putText(img, f"{key} {tracker}", (w - mr + 46, legend_y + 4), font, 0.4,
                        (0, 0, 0), 1)
            legend_y += 18
        cv2.circle(img, xy(r["fps"], 1.0), 6, base, 2, cv2.LINE_AA)
    cv2.putText(img, "o every frame (K=1)", (w - mr + 12, legend_y + 10), font, 0.4, grey, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise DiscoverError(f"cannot write {path}; check the folder is writable")


# -- entry point --------------------------------------------------------------------------------

def run_bench_ground(source: str | None = None, max_frames: int | None = None,
                     out: Path = Path("out/bench"), start: int = 0, quiet: bool = False,
                     grounders: Sequence[str] = GROUNDER_KEYS,
                     every: Sequence[int] = EVERY, repeats: int = REPEATS,
                     trackers: Sequence[str] = TRACKERS) -> dict[str, Any]:
    from discover.sdk.profiles import load_profile

    src = source or str(SAMPLE_CLIP)
    prog = Progress("bench ground", enabled=not quiet)
    frames, _ = load_frames(src, start, max_frames)
    prog.update(f"{len(frames)} frames of {src} from frame {start}", force=True)
    labels = load_profile(TASK).labels
    h, w = frames[0].shape[:2]
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    quiet_log = logging.getLogger("discover.sdk.grounders")
    level = quiet_log.level
    quiet_log.setLevel(logging.ERROR)  # "labels without a COCO class" once per fresh grounder
    try:
        for key in grounders:
            try:
                _make(key)
            except DiscoverError as e:
                skipped[key] = str(e)
                prog.update(f"{key}: skipped ({str(e)[:80]}...)", force=True)
                continue
            prog.update(f"{key}: every frame", force=True)
            results[key] = bench_grounder(key, frames, labels, every, trackers, prog=prog,
                                          repeats=repeats)
            flow = {t["every"]: t for t in results[key]["tracked"] if t["tracker"] == "flow"}
            prog.update(f"{key}: {results[key]['fps']:.1f} fps alone; flow " + ", ".join(
                f"K={k}: {t['fps']:.0f} fps, mAP50 {t['agreement_map50']:.3f}"
                for k, t in flow.items()), force=True)
    finally:
        quiet_log.setLevel(level)
        prog.done()
    summary: dict[str, Any] = {
        "source": src, "start": start, "frames": len(frames), "width": w, "height": h,
        "task": TASK, "labels": len(labels), "every": list(every), "repeats": repeats,
        "grounders": {k: {"fps": r["fps"], "ground_ms": r["ground_ms"], **{
            f"k{t['every']}_{t['tracker']}": {"fps": t["fps"], "map50": t["agreement_map50"],
                                              "track_ms": t["track_ms"]}
            for t in r["tracked"]}} for k, r in results.items()},
        "skipped": skipped}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ground.json").write_text(json.dumps({**summary, "results": results}, indent=2))
    title = f"{Path(src).name} from frame {start}, {len(frames)} frames, {w}x{h}"
    plot(results, out / "ground.png", title)
    summary["json"] = str(out / "ground.json")
    summary["plot"] = str(out / "ground.png")
    return summary
