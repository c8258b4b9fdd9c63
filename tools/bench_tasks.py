"""``discover bench tasks``: rate vs task accuracy, ours against standard codecs (issue 4).

The task model (NanoDet, the offline detector) runs on the original frames; its boxes with
score >= ``ref_score`` are the reference. Every setting codes the same frames at a few rate
points; NanoDet runs again on each decoded (or composed) frame and is scored against the
reference with COCO AP (sdk.metrics): ``det_map50`` (mAP@0.5) and ``det_map`` (mAP@[.5:.95]),
over the classes with at least ``min_refs`` reference boxes (the others are listed with their
counts, out of the headline).

Settings:

* ``ours_task``: the edge pipeline in process (nanodet grounder, CameraAgent.regions, classical
  codec at several qualities), side + task substreams only, decoded with ``codec.decompress``;
* ``ours_full``: the same plus rest every ``rest_interval`` frames, composed by ``background``;
* ``x264`` / ``x265`` / ``av1`` (libsvtav1): the clip as video, yuv420p, several CRFs;
* ``jpeg``: every frame as its own JPEG.

Bits are real bytes: MQTT packets from sdk.framing.frame_messages for ours, encoded packets for
the anchors. Comparisons (ours vs x265, x264) are made only where the det_map50 ranges overlap:
the rate ratio at matched score (log-rate interpolation) and the Bjontegaard delta rate (cubic
fit of log-rate over score); no extrapolation. Writes ``<out>/tasks.json`` and
``<out>/tasks_rate.png``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from discover.progress import Progress
from sdk.assets import SAMPLE_CLIP
from sdk.metrics import coco_map
from sdk.rd import bd_rate_points, overlap_points, rate_ratios

OURS = ("ours_task", "ours_full")
ANCHORS = ("x265", "x264")
COLORS = {"ours_task": (0, 0, 220), "ours_full": (0, 140, 255), "x264": (200, 120, 0),
          "x265": (160, 0, 160), "av1": (0, 150, 0), "jpeg": (100, 100, 100)}

Preds = list[list[tuple[Any, str, float]]]


def overlap(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]],
            key: str = "det_map50") -> tuple[float, float] | None:
    """The score interval both curves span, or None (sdk.rd.overlap_points on kbps)."""
    return overlap_points(a, b, key)


def bd_rate(test: Sequence[dict[str, Any]], anchor: Sequence[dict[str, Any]],
            key: str = "det_map50") -> tuple[float | None, str]:
    """Bjontegaard delta rate of ``test`` vs ``anchor`` in percent on kbps (sdk.rd, cubic fit,
    overlapping score range only); (None, reason) without overlap."""
    return bd_rate_points(test, anchor, key)


# -- settings ---------------------------------------------------------------------------------

def _video(frames: list[np.ndarray], fps: float, encoder: str, crf: int,
           decoders: Sequence[str]) -> tuple[int, list[np.ndarray]]:
    """Encode ``frames`` as one yuv420p video with PyAV; (packet bytes, decoded BGR frames)."""
    import av

    h, w = frames[0].shape[:2]
    enc = av.CodecContext.create(encoder, "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    rate = max(1, round(fps))
    enc.time_base = Fraction(1, rate)
    enc.framerate = Fraction(rate, 1)
    opts = {"crf": str(crf)}
    if encoder == "libx265":
        opts["x265-params"] = "log-level=error:info=0"  # no 2 KB version SEI in the bits
    if encoder == "libsvtav1":
        opts["preset"] = "10"
        os.environ.setdefault("SVT_LOG", "1")  # errors only, not the config banner
    enc.options = opts
    enc.open()
    packets = []
    for i, img in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        vf.pts = i
        packets += enc.encode(vf)
    packets += enc.encode(None)
    size = sum(p.size for p in packets)
    dec = None
    for name in decoders:
        try:
            dec = av.CodecContext.create(name, "r")
            if enc.extradata:
                dec.extradata = enc.extradata
            dec.open()
            break
        except Exception:  # noqa: BLE001 - try the next decoder
            dec = None
    if dec is None:
        raise RuntimeError(f"no decoder among {list(decoders)}")
    out = []
    for p in packets:
        out += [f.to_ndarray(format="bgr24") for f in dec.decode(p)]
    out += [f.to_ndarray(format="bgr24") for f in dec.decode(None)]
    if len(out) != len(frames):
        raise RuntimeError(f"{encoder}: decoded {len(out)} frames of {len(frames)}")
    return size, out


VIDEO = {"x264": ("libx264", ("h264",)), "x265": ("libx265", ("hevc",)),
         "av1": ("libsvtav1", ("libdav1d", "av1"))}


def _jpeg(frames: list[np.ndarray], q: int) -> tuple[int, list[np.ndarray]]:
    size, out = 0, []
    for img in frames:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        size += len(buf)
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    return size, out


class OursPipeline:
    """The edge's grounder -> regions -> codec -> packets, in process, then decode + compose."""

    def __init__(self, source: str, frames: list[np.ndarray], rest_interval: int,
                 codec: dict[str, Any] | None = None) -> None:
        from edge.agent import CameraAgent
        from edge.config import CameraConfig, EdgeSection
        from sdk.transport.broker import BrokerConfig

        cam = CameraConfig(id="bench", source=source, tasks=["detection"],
                           rest_interval=rest_interval)
        edge = EdgeSection(grounder={"type": "nanodet"}, codec=codec or {"type": "classical"})
        self.agent = CameraAgent(cam, edge, BrokerConfig(), "bench")
        self.agent.source.close()  # frames come from memory
        h, w = frames[0].shape[:2]
        self.frames = frames
        self.regions = [self.agent.regions(self.agent.tracker.ground(f, self.agent.labels), w, h)
                        for f in frames]
        self.area_share = float(np.mean([sum((r.box[2] - r.box[0]) * (r.box[3] - r.box[1])
                                              for r in rs) / (w * h) for rs in self.regions]))

    def run(self, quality: int, full: bool) -> tuple[int, list[np.ndarray]]:
        from sdk.codecs import CODECS
        from sdk.framing import frame_messages
        from sink.composers import COMPOSERS

        agent = self.agent
        # a fresh codec per run: temporal codecs start from an intra frame
        codec = CODECS.create({**agent.edge.codec_for(agent.cam).model_dump(), "quality": quality})
        sink_codec = CODECS.create(codec.descriptor()["config"])
        composer = COMPOSERS.create({"type": "background" if full else "direct"})
        h, w = self.frames[0].shape[:2]
        every = agent.cam.rest_interval
        size, out = 0, []
        for i, (img, regions) in enumerate(zip(self.frames, self.regions, strict=True)):
            send_rest = full and every > 0 and i % every == 0
            coded = codec.compress(img, regions, send_rest)
            msgs = frame_messages("bench", agent.meta, i, 0, regions, coded,
                                  max_packet=agent.edge.max_packet,
                                  intra=bool(coded.get("intra", True)))
            size += sum(len(p) for _, p in msgs)
            dec = sink_codec.decompress({"side": coded["side"], "regions": coded["regions"],
                                    "rest": coded.get("rest"), "table": regions, "size": (w, h)})
            out.append(composer.compose(dec, {"frame": i, "regions": regions}))
        return size, out


# -- plot -------------------------------------------------------------------------------------

def plot(settings: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """det_map50 against kbps (log) per setting, drawn with OpenCV."""
    w, h, ml, mr, mt, mb = 900, 560, 70, 170, 50, 60
    img = np.full((h, w, 3), 255, np.uint8)
    pts = [p for s in settings.values() for p in s.get("points", []) if p["kbps"] > 0]
    if not pts:
        cv2.imwrite(str(path), img)
        return
    lo = math.log10(min(p["kbps"] for p in pts)) - 0.05
    hi = math.log10(max(p["kbps"] for p in pts)) + 0.05

    def xy(kbps: float, ap: float) -> tuple[int, int]:
        x = ml + (math.log10(kbps) - lo) / (hi - lo) * (w - ml - mr)
        return int(round(x)), int(round(h - mb - ap * (h - mt - mb)))

    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(img, (ml, mt), (w - mr, h - mb), (0, 0, 0), 1)
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo <= math.log10(v) <= hi:
                x = xy(v, 0)[0]
                cv2.line(img, (x, mt), (x, h - mb), (225, 225, 225), 1)
                cv2.putText(img, f"{v:g}", (x - 10, h - mb + 18), font, 0.4, (0, 0, 0), 1)
    for ap in np.linspace(0, 1, 6):
        y = xy(10 ** lo, ap)[1]
        cv2.line(img, (ml, y), (w - mr, y), (225, 225, 225), 1)
        cv2.putText(img, f"{ap:.1f}", (ml - 35, y + 4), font, 0.4, (0, 0, 0), 1)
    cv2.putText(img, "kbps (log)", (ml + 300, h - 20), font, 0.5, (0, 0, 0), 1)
    cv2.putText(img, "det mAP@0.5 vs NanoDet on originals", (8, mt - 15), font, 0.5, (0, 0, 0), 1)
    cv2.putText(img, title, (ml + 330, 25), font, 0.5, (0, 0, 0), 1)
    legend_y = mt + 10
    for name, s in settings.items():
        ps = sorted((p for p in s.get("points", []) if p["kbps"] > 0), key=lambda p: p["kbps"])
        if not ps:
            continue
        col = COLORS.get(name, (0, 0, 0))
        line = [xy(p["kbps"], p["det_map50"]) for p in ps]
        cv2.polylines(img, [np.array(line, np.int32)], False, col, 2, cv2.LINE_AA)
        for x, y in line:
            cv2.circle(img, (x, y), 4, col, -1, cv2.LINE_AA)
        cv2.line(img, (w - mr + 12, legend_y), (w - mr + 40, legend_y), col, 2)
        cv2.putText(img, name, (w - mr + 46, legend_y + 4), font, 0.45, col, 1)
        legend_y += 20
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise RuntimeError(f"could not write {path}")


# -- run --------------------------------------------------------------------------------------

def run_bench_tasks(source: str | None = None, max_frames: int | None = None,
                    out: Path = Path("out/bench"), quiet: bool = False, *,
                    qualities: Sequence[int] | None = None,
                    codec: str = "classical", checkpoint: Path | None = None,
                    x264_crfs: Sequence[int] = (23, 30, 37, 44, 51),
                    x265_crfs: Sequence[int] = (23, 30, 37, 44, 51),
                    av1_crfs: Sequence[int] = (30, 40, 50, 60),
                    jpeg_qualities: Sequence[int] = (10, 30, 50, 75, 90),
                    rest_interval: int = 10, min_refs: int = 20, ref_score: float = 0.3,
                    pred_score: float = 0.05) -> dict[str, Any]:
    from sdk.models.nanodet import NanoDet
    from tools.bench_ground import load_frames

    src = source or str(SAMPLE_CLIP)
    prog = Progress("bench tasks", enabled=not quiet)
    t_start = time.monotonic()
    frames, fps = load_frames(src, 0, max_frames)
    n, (h, w) = len(frames), frames[0].shape[:2]
    fps = fps or 10.0
    prog.update(f"{n} frames {w}x{h} of {src}", force=True)
    model = NanoDet()

    def detect(imgs: list[np.ndarray], thr: float) -> Preds:
        res = []
        for img in imgs:
            d = model.detect(img, score_threshold=thr)
            res.append([(tuple(float(v) for v in b), lb, float(s))
                        for b, lb, s in zip(d.boxes, d.labels, d.scores, strict=True)])
        return res

    ref_full = detect(frames, ref_score)
    counts = Counter(lb for f in ref_full for _, lb, _ in f)
    headline = sorted(c for c, k in counts.items() if k >= min_refs)
    refs = [[(b, lb) for b, lb, _ in f if lb in headline] for f in ref_full]
    prog.update(f"reference: {sum(counts.values())} boxes; headline classes {headline}",
                force=True)

    def score(size: int, decoded: list[np.ndarray], point: str) -> dict[str, Any]:
        m = coco_map(detect(decoded, pred_score), refs)
        return {"point": point, "bytes": size, "kbps": round(size * 8 / 1000 / (n / fps), 2),
                "bpp": round(size * 8 / (n * w * h), 5), "det_map50": round(m["map_50"], 4),
                "det_map": round(m["map_50_95"], 4),
                "per_class_50": {k: round(v, 4) for k, v in m["per_class_50"].items()}}

    jobs: list[tuple[str, str, Callable[[], tuple[int, list[np.ndarray]]]]] = []
    codec_cfg: dict[str, Any] = {"type": codec}
    if codec == "learned":
        codec_cfg["checkpoint"] = str(checkpoint) if checkpoint else None
    ours = OursPipeline(src, frames, rest_interval, codec_cfg)
    if qualities is None:
        points = ours.agent.codec.model.config.rate_points if codec == "learned" else 0
        qualities = tuple(range(1, points + 1)) if points else (30, 50, 75, 90)
    for q in qualities:
        jobs.append(("ours_task", f"q{q}", lambda q=q: ours.run(q, full=False)))
    for q in qualities:
        jobs.append(("ours_full", f"q{q}", lambda q=q: ours.run(q, full=True)))
    for name, crfs in (("x264", x264_crfs), ("x265", x265_crfs), ("av1", av1_crfs)):
        enc, decs = VIDEO[name]
        for c in crfs:
            jobs.append((name, f"crf{c}", lambda enc=enc, decs=decs, c=c:
                         _video(frames, fps, enc, c, decs)))
    for q in jpeg_qualities:
        jobs.append(("jpeg", f"q{q}", lambda q=q: _jpeg(frames, q)))

    settings: dict[str, dict[str, Any]] = {}
    try:
        for k, (name, point, job) in enumerate(jobs, 1):
            s = settings.setdefault(name, {"points": []})
            if "skipped" in s:
                continue
            prog.update(f"[{k}/{len(jobs)}] {name} {point}", force=True)
            try:
                size, decoded = job()
            except Exception as e:  # noqa: BLE001 - a missing encoder skips the setting
                if name != "av1":
                    raise
                s["skipped"] = f"{type(e).__name__}: {str(e)[:200]}"
                prog.update(f"{name}: skipped ({s['skipped'][:80]})", force=True)
                continue
            p = score(size, decoded, point)
            s["points"].append(p)
            prog.update(f"{name} {point}: {p['kbps']} kbps, det_map50 {p['det_map50']}",
                        force=True)
    finally:
        prog.done()
    for s in settings.values():
        for key in ("kbps", "bpp", "det_map50", "det_map"):
            s[key] = [p[key] for p in s["points"]]

    comparisons: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for o in OURS:
        for a in ANCHORS:
            po, pa = settings[o]["points"], settings[a]["points"]
            bd, why = bd_rate(po, pa)
            rng = overlap(po, pa)
            comparisons[f"{o}_vs_{a}"] = {
                "det_map50_overlap": list(rng) if rng else None,
                "rate_ratio_at_matched_det_map50": rate_ratios(po, pa),
                "bd_rate_det": None if bd is None else round(bd, 2), "bd_rate_note": why}
            key = f"bd_rate_det_vs_{a}" if o == "ours_task" else f"bd_rate_det_full_vs_{a}"
            summary[key] = None if bd is None else round(bd, 2)
            summary[key + "_note"] = why

    result = {
        "source": src, "frames": n, "width": w, "height": h, "fps": fps,
        "reference": {"model": "nanodet (original frames)", "score_threshold": ref_score,
                      "prediction_score_threshold": pred_score, "boxes": sum(counts.values())},
        "min_refs": min_refs, "headline_classes": {c: counts[c] for c in headline},
        "excluded_classes": {c: k for c, k in sorted(counts.items()) if c not in headline},
        "ours_task_area_share": round(ours.area_share, 4),
        "ours_codec": {"type": codec, "checkpoint": ours.agent.codec.checkpoint_hash()},
        "settings": settings, "comparisons": comparisons, **summary,
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tasks.json").write_text(json.dumps(result, indent=2))
    plot(settings, out / "tasks_rate.png", f"{Path(src).name}, {n} frames")
    result["plot"] = str(out / "tasks_rate.png")
    return result
