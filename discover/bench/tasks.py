"""``discover bench tasks``: rate vs task accuracy, ours against standard codecs (issue 4).

The task model (NanoDet, the offline detector) runs on the original frames; its boxes with
score >= ``ref_score`` are the reference. Every setting codes the same frames at a few rate
points; NanoDet runs again on each decoded (or composed) frame and is scored against the
reference with COCO AP (sdk.metrics): ``det_map50`` (mAP@0.5) and ``det_map`` (mAP@[.5:.95]),
over the classes with at least ``min_refs`` reference boxes, or those named with ``--classes``
(the others are listed with their counts, out of the headline). With ``--annotations FILE``
(COCO format) the file's boxes are the reference instead, on the frames it annotates
(discover/bench/coco_annotations.py).

Settings:

* ``ours_task``: the edge pipeline in process (nanodet grounder, CameraAgent.regions, the
  codec at several qualities), side + task substreams only, decoded with ``codec.decompress``
  and shown as the codec decodes it (``direct``: regions over the background M(z) rebuilds);
* ``ours_full``: the same plus ``rest`` on every frame (the whole view coded), ``direct``;
* ``ours_bg``: ``rest`` as the edge sends it by default (every ``rest_interval`` frames and when
  the background changed, sdk.rest.RestScheduler), composed by ``background`` (regions pasted on
  the last full view): the static-camera setting;
* ``x264`` / ``x265`` / ``av1`` (libsvtav1): the clip as video, yuv420p, several CRFs;
* ``jpeg`` / ``webp``: every frame as its own image (OpenCV).

Bits are real bytes: MQTT packets from discover.sdk.framing.frame_messages for ours, encoded packets for
the anchors. Comparisons (ours vs x265, x264) are made only where the det_map50 ranges overlap:
the rate ratio at matched score (log-rate interpolation) and the Bjontegaard delta rate (pchip
fit of log-rate over score, on each curve's rate-score front: task scores on 50 frames are
noisy, and a rate point that costs more for a lower score than a cheaper one is left out, the
note says how many); no extrapolation. Writes ``<out>/tasks.json``,
``<out>/tasks_rate.png`` and ``<out>/side_by_side.png``.

More scores per rate point (``tasks`` picks the task models: ``det``, ``cls``, ``seg``):

* ``cls_top1`` (``cls``): top-1 agreement of the offline classifier (``efficientnet-lite0``,
  the sink task model, per-region mode) on the decoded frame with its own answer on the
  original frame, **per object crop**: the crops are the NanoDet reference boxes of the
  originals (all classes, score >= ``ref_score``; the ``cls_max_regions`` largest per frame),
  the same crops on both sides, cut as the sink cuts them (square window, 15 % context). Per
  crop, not whole frame: a street view holds many objects and one ImageNet label for the whole
  frame describes none of them (and ours_task has nothing outside its regions); per crop it
  asks "does the classifier still see the same thing in each object". The fraction of crops
  whose top-1 class is unchanged, over all crops of all frames.
* ``seg_miou`` (``seg``): the offline person-mask model (``person-mask``, crops mode, as the
  sink runs it) given the NanoDet reference *person* boxes as its region table, on decoded vs
  original frames: mean IoU **per person instance** (instances matched by box id; an instance
  only one side finds counts IoU 0, one neither finds is left out). Per instance rather than a
  whole-frame union: small people would drown in the union of the large ones.
* ``psnr`` and ``ms_ssim`` (sdk.rd, RGB, whole frame), mean over frames; ``psnr_task``: PSNR
  inside the union of ours' task regions (the pixels ours codes, the same mask for every
  setting). Always computed (``ms_ssim_every`` > 1 samples every k-th frame for MS-SSIM only,
  a cost knob for tests; default every frame).
* ``fid``, ``kid``, ``lpips``, ``dists`` (discover/bench/perceptual.py, torchmetrics): distances of the
  decoded frames to the originals, lower is closer, for each metric whose pretrained weights
  are in the torch hub cache (``python -m discover.bench.perceptual`` says which; ``--fetch`` gets them
  where there is internet); skipped with a note in ``perceptual.skipped`` otherwise.
* BD-rates and matched-rate ratios on every score (``bd_rate_<score>_vs_<anchor>``, ``_full_``
  for ours_full, ``_bg_`` for ours_bg), null with a note where the curves do not overlap; MS-SSIM on its raw scale.
  The detection BD-rates carry a 95 % interval (``bd_rate_det_vs_x265_ci95`` ...): a paired
  bootstrap over the scored frames (discover/bench/bootstrap.py; ``bootstrap`` draws, 0: none).
* ``sink_fps`` {composer: frames/s}: one sink worker (sink.pipeline.SinkPipeline, reassembly
  -> decompress -> compose -> the ``nanodet`` detection task model) fed the MQTT packets of
  ours_bg at one rate point (the middle quality), for ``direct`` and ``background`` (and
  ``diffusion`` only when ``diffusion_weights`` names its folder; skipped with a note
  otherwise), on this machine's CPU, in the same run.
* per point ``per_class``: AP@0.5, AP@[.5:.95] and the reference box count per class.
* ``side_by_side.png``: the middle frame, original / ours_task / ours_full / ours_bg / x265,
  each coded setting at its lowest-rate point, labelled.
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

from discover.bench.bootstrap import FrameBootstrap
from discover.progress import Progress
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.errors import DiscoverError
from discover.sdk.metrics import COCO_IOU_THRESHOLDS, FrameMatches, coco_map_of
from discover.sdk.rd import bd_rate_points, overlap_points, rate_ratios
from discover.sdk.regions import region_mask

OURS = ("ours_task", "ours_full", "ours_bg")
OURS_MODE = {"ours_task": "task", "ours_full": "full", "ours_bg": "background"}
#: the summary key infix of each of ours (bd_rate_det_vs_x265, bd_rate_det_full_vs_x265, ...)
OURS_INFIX = {"ours_task": "", "ours_full": "full_", "ours_bg": "bg_"}
ANCHORS = ("x265", "x264")
COLORS = {"ours_task": (0, 0, 220), "ours_full": (0, 140, 255), "ours_bg": (0, 200, 200),
          "x264": (200, 120, 0), "x265": (160, 0, 160), "av1": (0, 150, 0),
          "jpeg": (100, 100, 100), "webp": (60, 60, 160)}

Preds = list[list[tuple[Any, str, float]]]


def overlap(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]],
            key: str = "det_map50") -> tuple[float, float] | None:
    """The score interval both curves span, or None (sdk.rd.overlap_points on kbps)."""
    return overlap_points(a, b, key)


def bd_rate(test: Sequence[dict[str, Any]], anchor: Sequence[dict[str, Any]],
            key: str = "det_map50") -> tuple[float | None, str]:
    """Bjontegaard delta rate of ``test`` vs ``anchor`` in percent on kbps (sdk.rd; piecewise
    cubic Hermite (pchip) fit of log-rate over score, overlapping score range only, each curve's
    rate-score front: a rate point that costs more than another for a lower score is left out,
    and the note says so); (None, reason) without overlap. pchip, not the classic cubic: with
    four or five noisy task-score points the cubic overshoots between two close scores (on
    this clip +3381 % for ours_full vs x265 where the rates at matched mAP differ 9-16x; pchip
    +1345 %)."""
    return bd_rate_points(test, anchor, key, method="pchip", on_front=True)


# -- settings ---------------------------------------------------------------------------------

def code_video(frames: list[np.ndarray], fps: float, encoder: str, crf: int,
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


#: the video codec's quality steps (sdk/codecs/video: CRF per step)
VIDEO_QUALITIES = (1, 2, 3, 4, 5, 6)
VIDEO = {"x264": ("libx264", ("h264",)), "x265": ("libx265", ("hevc",)),
         "av1": ("libsvtav1", ("libdav1d", "av1"))}


def code_images(frames: list[np.ndarray], q: int, ext: str = ".jpg") -> tuple[int, list[np.ndarray]]:
    """Every frame as its own JPEG or WebP (OpenCV) at quality ``q``."""
    flag = cv2.IMWRITE_WEBP_QUALITY if ext == ".webp" else cv2.IMWRITE_JPEG_QUALITY
    size, out = 0, []
    for img in frames:
        ok, buf = cv2.imencode(ext, img, [flag, q])
        size += len(buf)
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    return size, out


class OursPipeline:
    """The real edge on frames in memory (CameraAgent.step: regions, rest schedule, codec,
    MQTT packets; boxes grounded once for every run), then the sink's decode and compose."""

    def __init__(self, source: str, frames: list[np.ndarray], rest_interval: int,
                 codec: dict[str, Any] | None = None) -> None:
        self.source, self.frames, self.rest_interval = source, frames, rest_interval
        self.codec_cfg = codec or {"type": "classical"}
        self.agent = self._agent(None)
        h, w = frames[0].shape[:2]
        self.kept: tuple[Any, list[list[tuple[str, bytes]]]] | None = None
        self.rest_reasons: dict[str, int] = {}  #: rests ours_bg sent, by trigger
        self.edge_summary: dict[str, Any] = {}  #: the last run's CameraAgent stats summary
        self.detections = [self.agent.tracker.ground(f, self.agent.labels) for f in frames]
        self.regions = [self.agent.regions(d, w, h) for d in self.detections]
        self.area_share = float(np.mean([sum((r.box[2] - r.box[0]) * (r.box[3] - r.box[1])
                                              for r in rs) / (w * h) for rs in self.regions]))

    def _agent(self, quality: int | None) -> Any:
        """A CameraAgent for the bench camera with the codec at ``quality`` (a fresh codec:
        temporal codecs start from an intra frame); frames come from memory."""
        from discover.edge.agent import CameraAgent
        from discover.edge.config import CameraConfig, EdgeSection
        from discover.sdk.transport.broker import BrokerConfig

        codec = dict(self.codec_cfg)
        if quality is not None:
            codec["quality"] = quality
        cam = CameraConfig(id="bench", source=self.source, tasks=["detection"],
                           rest_interval=self.rest_interval)
        agent = CameraAgent(cam, EdgeSection(grounder={"type": "nanodet"}, codec=codec),
                            BrokerConfig(), "bench")
        agent.source.close()
        return agent

    def run(self, quality: int, mode: str, keep: bool = False) -> tuple[int, list[np.ndarray]]:
        """Bytes and composed frames at ``quality``; ``mode``: ``task`` (no rest), ``full``
        (rest on every frame) or ``background`` (rest as the edge schedules it, background
        composer). ``keep``: also keep the stream descriptor and every frame's MQTT packets in
        ``self.kept`` (for the sink throughput run)."""
        from discover.sdk.codecs import CODECS, CodedFrame
        from discover.sink.composers import COMPOSERS

        agent = self._agent(quality)
        sink_codec = CODECS.create(agent.codec.descriptor()["config"])
        composer = COMPOSERS.create({"type": "background" if mode == "background" else "direct"})
        h, w = self.frames[0].shape[:2]
        send_rest = {"task": False, "full": True}.get(mode)  # None: the agent's scheduler
        size, out = 0, []
        kept: list[list[tuple[str, bytes]]] = []
        for i, (img, dets) in enumerate(zip(self.frames, self.detections, strict=True)):
            st = agent.step(img, i, 0, send_rest=send_rest, detections=dets)
            size += sum(len(p) for _, p in st.messages)
            if keep:
                kept.append(st.messages)
            dec = sink_codec.decompress(CodedFrame.of(st.coded, st.regions, (w, h)))
            out.append(composer.compose(dec, {"frame": i, "regions": st.regions}))
        if keep:
            self.kept = (agent.meta, kept)
        agent.close()
        if mode == "background":
            self.rest_reasons = dict(agent.rest.reasons)
        self.edge_summary = agent.stats.summary()
        return size, out


def sink_fps(meta: Any, messages: list[list[tuple[str, bytes]]],
             composer: dict[str, Any], prefix: str = "bench") -> float:
    """Frames per second of one sink worker (SinkPipeline: reassembly, decompress, compose, the
    ``nanodet`` detection task model; no files, nothing published) fed ``messages`` frame by
    frame, as its worker loop takes them. Model loading is outside the clock."""
    from discover.sdk.topics import topic
    from discover.sink.config import SinkSection
    from discover.sink.pipeline import SinkPipeline

    section = SinkSection.model_validate({
        "tasks": list(meta.tasks), "composer": composer, "output": "none",
        "publish_results": False, "task_models": {t: {"type": "nanodet"} for t in meta.tasks}})
    pipe = SinkPipeline(section, prefix)
    pipe.feed(topic(prefix, meta.camera, "meta"), meta.to_json())
    t0 = time.perf_counter()
    for msgs in messages:
        for t, payload in msgs:
            pipe.feed(t, payload)
        pipe.process_ready()
    pipe.process_ready(flush=True)
    dt = time.perf_counter() - t0
    pipe.close()
    if pipe.frames_out != len(messages):
        raise RuntimeError(f"sink ({composer.get('type')}) delivered {pipe.frames_out} of "
                           f"{len(messages)} frames")
    return round(len(messages) / dt, 2) if dt > 0 else 0.0


def side_by_side(panels: list[tuple[str, np.ndarray]], path: Path) -> None:
    """The images side by side (width: the sum of theirs), each under a 28 px label strip."""
    h = max(im.shape[0] for _, im in panels)
    cols = []
    for label, im in panels:
        col = np.full((h + 28, im.shape[1], 3), 255, np.uint8)
        col[28:28 + im.shape[0]] = im
        cv2.putText(col, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
        cv2.line(col, (0, 0), (0, h + 27), (255, 255, 255), 2)
        cols.append(col)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.hstack(cols)):
        raise RuntimeError(f"could not write {path}")


def _int_box(box: Sequence[float], w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
    return x0, y0, min(w, int(math.ceil(box[2]))), min(h, int(math.ceil(box[3])))


# -- plot -------------------------------------------------------------------------------------

def plot(settings: dict[str, dict[str, Any]], path: Path, title: str,
         key: str = "det_map50", label: str = "det mAP@0.5 vs NanoDet on originals") -> None:
    """``key`` (a 0..1 score, default det_map50) against kbps (log) per setting, with OpenCV."""
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
    cv2.putText(img, label, (8, mt - 15), font, 0.5, (0, 0, 0), 1)
    cv2.putText(img, title, (ml + 330, 25), font, 0.5, (0, 0, 0), 1)
    legend_y = mt + 10
    for name, s in settings.items():
        ps = sorted((p for p in s.get("points", []) if p["kbps"] > 0 and p.get(key) is not None),
                    key=lambda p: p["kbps"])
        if not ps:
            continue
        col = COLORS.get(name, (0, 0, 0))
        line = [xy(p["kbps"], p[key]) for p in ps]
        cv2.polylines(img, [np.array(line, np.int32)], False, col, 2, cv2.LINE_AA)
        for x, y in line:
            cv2.circle(img, (x, y), 4, col, -1, cv2.LINE_AA)
        cv2.line(img, (w - mr + 12, legend_y), (w - mr + 40, legend_y), col, 2)
        cv2.putText(img, name, (w - mr + 46, legend_y + 4), font, 0.45, col, 1)
        legend_y += 20
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise RuntimeError(f"could not write {path}")


# -- scoring ----------------------------------------------------------------------------------

TASKS = ("det", "cls", "seg")
#: score key per short name, as the BD-rate keys name them (bd_rate_<short>_vs_<anchor>)
SCORES = {"det": "det_map50", "cls": "cls_top1", "seg": "seg_miou", "psnr": "psnr",
          "psnr_task": "psnr_task", "msssim": "ms_ssim"}
#: distances to the originals (lower is closer), where their weights are present
PERCEPTUAL = ("fid", "kid", "lpips", "dists")


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """``tasks`` without blanks and repeats; one error line unless a non-empty subset of TASKS."""
    tasks = tuple(dict.fromkeys(t.strip() for t in tasks if t.strip()))
    if not tasks or set(tasks) - set(TASKS):
        raise DiscoverError(f"bench tasks: --tasks takes a comma-separated subset of "
                            f"{','.join(TASKS)} (got {','.join(tasks) or 'nothing'})")
    return tasks


def _check_ours(ours_settings: Sequence[str], bootstrap: int) -> list[str]:
    """Which of ours to run, in their order; an unknown name or negative draws is an error."""
    unknown = [o for o in ours_settings if o not in OURS]
    if unknown or not ours_settings:
        raise DiscoverError(f"bench tasks: unknown setting(s) {', '.join(unknown) or '(none)'} "
                            f"for ours; choose some of {', '.join(OURS)} (--ours)")
    if bootstrap < 0:
        raise DiscoverError(f"bench tasks: --bootstrap takes a number of draws >= 0 "
                            f"(got {bootstrap})")
    return [o for o in OURS if o in ours_settings]


def _annotation_refs(annotations: Path, src: str, frames: list[np.ndarray], fps: float,
                     max_frames: int | None) -> tuple[list[int], Preds, dict[str, Any]]:
    """(frames scored, reference boxes per frame, info) from a COCO-format file; an image
    folder's frames are matched to it by file name."""
    from discover.bench.coco_annotations import load_coco_references
    from discover.sdk.models.nanodet import COCO80_LABELS

    n, names = len(frames), None
    if Path(src).is_dir():
        from discover.edge.sources import ImageFolderSource

        names = [p.name for p in ImageFolderSource(Path(src), fps).paths]
        if len(names) != len(frames) and (max_frames is None or len(names) < max_frames):
            raise DiscoverError(f"{src}: {len(names) - len(frames)} of its images could "
                                "not be read, so frames cannot be matched to --annotations "
                                "by file name; remove them")
        names = names[:n]
    ann_refs, ann_info = load_coco_references(annotations, n, COCO80_LABELS, names)
    return ann_info["frames"], [[(b, lb, 1.0) for b, lb in f] for f in ann_refs], ann_info


class TaskScorer:
    """Every score of one rate point (module docstring): the task models on the decoded frames
    against their answers on the originals (or the annotations), pixel fidelity, perceptual
    distances. Set up once per run; :meth:`score` per rate point."""

    def __init__(self, frames: list[np.ndarray], fps: float, tasks: tuple[str, ...],
                 pred_score: float, ms_ssim_every: int, prog: Progress) -> None:
        from discover.sdk.models.nanodet import NanoDet

        self.frames, self.fps, self.tasks, self.prog = frames, fps, tasks, prog
        self.n, (self.h, self.w) = len(frames), frames[0].shape[:2]
        self.pred_score, self.ms_ssim_every = pred_score, ms_ssim_every
        self.model = NanoDet()
        self.scored: list[int] = list(range(self.n))  #: the frames detection is scored on
        self.ref_full: Preds = []
        self.refs: list[list[tuple[Any, str]]] = []
        self.counts: Counter[str] = Counter()
        self.headline: list[str] = []
        self.cls_model: Any = None
        self.seg_model: Any = None
        self.tables: dict[str, list[list[Any]]] = {}
        self.ref_cls: list[dict[int, int]] = []
        self.ref_seg: list[dict[int, np.ndarray]] = []
        self.perceptual: tuple[str, ...] = ()
        self.perceptual_notes: dict[str, str] = {}
        self.scorer: Any = None
        #: ours' task pixels: the union of its region boxes per frame (psnr_task everywhere)
        self.ours_masks: list[np.ndarray] = []
        #: the last scored point's detections matched to the references (for the bootstrap)
        self.last_matches: FrameMatches | None = None

    def detect(self, imgs: list[np.ndarray], thr: float) -> Preds:
        """NanoDet's boxes with score >= ``thr`` on each image."""
        res = []
        for img in imgs:
            d = self.model.detect(img, score_threshold=thr)
            res.append([(tuple(float(v) for v in b), lb, float(s))
                        for b, lb, s in zip(d.boxes, d.labels, d.scores, strict=True)])
        return res

    def set_references(self, ref_full: Preds, scored: list[int], min_refs: int,
                       classes: Sequence[str] = ()) -> None:
        """The reference boxes; the headline classes are those with >= ``min_refs`` of them,
        or ``classes`` where given (the task's own: what a person-counting sink needs is not
        what the detector flickers on in the background; each must have a reference box)."""
        self.ref_full, self.scored = ref_full, scored
        self.counts = Counter(lb for f in scored for _, lb, _ in ref_full[f])
        missing = [c for c in classes if not self.counts.get(c)]
        if missing:
            raise DiscoverError(f"bench tasks: no reference box of {', '.join(missing)} on these "
                                f"frames; choose --classes among "
                                f"{', '.join(sorted(self.counts)) or '(none found)'}")
        self.headline = (sorted(set(classes)) if classes
                         else sorted(c for c, k in self.counts.items() if k >= min_refs))
        self.refs = [[(b, lb) for b, lb, _ in ref_full[f] if lb in self.headline]
                     for f in scored]
        self.prog.update(f"reference: {sum(self.counts.values())} boxes on {len(scored)} "
                         f"frames; headline classes {self.headline}", force=True)

    def _table(self, f: int, task: str, person: bool) -> list[Any]:
        """Frame ``f``'s reference boxes as a region table for ``task`` (persons only)."""
        from discover.sdk.regions import Region

        out = []
        for i, (b, lb, sc) in enumerate(self.ref_full[f]):
            if person and lb != "person":
                continue
            box = _int_box(b, self.w, self.h)
            if box[2] > box[0] and box[3] > box[1]:
                out.append(Region(i, box, lb, sc, (task,)))
        return out

    def load_task_models(self, cls_max_regions: int) -> None:
        """The classifier and person-mask models, with their answers on the originals."""
        from discover.sink.tasks import TASK_MODELS

        if "cls" in self.tasks:
            self.cls_model = TASK_MODELS.create({"type": "efficientnet-lite0", "top_k": 1,
                                                 "max_regions": cls_max_regions,
                                                 "device": "cpu"})
            self.tables["cls"] = [self._table(f, "classification", False) for f in range(self.n)]
        if "seg" in self.tasks:
            self.seg_model = TASK_MODELS.create({"type": "person-mask"})
            self.tables["seg"] = [self._table(f, "segmentation", True) for f in range(self.n)]
        if self.cls_model:
            self.ref_cls = [self.classify(self.frames[f], f) for f in range(self.n)]
        if self.seg_model:
            self.ref_seg = [self.segment(self.frames[f], f) for f in range(self.n)]

    def load_perceptual(self, perceptual: Sequence[str]) -> None:
        """The perceptual metrics whose weights are here; the others noted as skipped."""
        self.perceptual = tuple(perceptual)
        if not perceptual:
            return
        from discover.bench.perceptual import PerceptualScorer

        self.scorer = PerceptualScorer(self.perceptual)
        self.perceptual_notes = self.scorer.load()
        for m, why in self.perceptual_notes.items():
            self.prog.update(f"{m}: skipped ({why})", force=True)

    def classify(self, img: np.ndarray, f: int) -> dict[int, int]:
        """Top-1 class index per reference crop of frame ``f``."""
        r = self.cls_model.run(img, {"task": "classification", "regions": self.tables["cls"][f]})
        return {e["id"]: e["top"][0]["index"] for e in r["regions"]}

    def segment(self, img: np.ndarray, f: int) -> dict[int, np.ndarray]:
        """The person mask per reference person box of frame ``f``."""
        from discover.sdk import masks

        r = self.seg_model.run(img, {"task": "segmentation", "regions": self.tables["seg"][f]})
        return {e["id"]: masks.decode(e["segmentation"]) for e in r["masks"]}

    def score(self, size: int, decoded: list[np.ndarray], point: str) -> dict[str, Any]:
        """Every score of one rate point: ``size`` bytes, the decoded frames."""
        n, w, h = self.n, self.w, self.h
        p: dict[str, Any] = {"point": point, "bytes": size,
                             "kbps": round(size * 8 / 1000 / (n / self.fps), 2),
                             "bpp": round(size * 8 / (n * w * h), 5)}
        if "det" in self.tasks:
            p.update(self._det(decoded))
        if self.cls_model is not None:
            p.update(self._cls(decoded))
        if self.seg_model is not None:
            p.update(self._seg(decoded))
        p.update(self._pixels(decoded))
        if self.scorer is not None and len(self.perceptual_notes) < len(self.perceptual):
            got = self.scorer.score(self.frames, decoded)
            p.update({m: round(float(got[m]), 6) for m in PERCEPTUAL if got.get(m) is not None})
        return p

    def _det(self, decoded: list[np.ndarray]) -> dict[str, Any]:
        preds = self.detect([decoded[f] for f in self.scored], self.pred_score)
        self.last_matches = FrameMatches(preds, self.refs, COCO_IOU_THRESHOLDS)
        m = coco_map_of(self.last_matches)
        return {"det_map50": round(m["map_50"], 4), "det_map": round(m["map_50_95"], 4),
                "per_class_50": {k: round(v, 4) for k, v in m["per_class_50"].items()},
                "per_class": {k: {"ap50": round(m["per_class_50"][k], 4),
                                  "ap": round(m["per_class_50_95"][k], 4),
                                  "refs": m["references"][k]}
                              for k in m["per_class_50"]}}

    def _cls(self, decoded: list[np.ndarray]) -> dict[str, Any]:
        same = total = 0
        for f, img in enumerate(decoded):
            got = self.classify(img, f)
            for rid, idx in self.ref_cls[f].items():
                total += 1
                same += int(got.get(rid) == idx)
        return {"cls_top1": round(same / total, 4) if total else None, "cls_crops": total}

    def _seg(self, decoded: list[np.ndarray]) -> dict[str, Any]:
        ious = []
        for f, img in enumerate(decoded):
            got, ref = self.segment(img, f), self.ref_seg[f]
            for rid in set(got) | set(ref):
                a, b = ref.get(rid), got.get(rid)
                if a is None or b is None:
                    ious.append(0.0)
                    continue
                union = int((a | b).sum())
                ious.append(float((a & b).sum()) / union if union else 1.0)
        return {"seg_miou": round(float(np.mean(ious)), 4) if ious else None,
                "seg_instances": len(ious)}

    def _pixels(self, decoded: list[np.ndarray]) -> dict[str, Any]:
        from discover.sdk.rd import masked_psnr, ms_ssim, psnr

        frames = self.frames
        ps = [psnr(o, d) for o, d in zip(frames, decoded, strict=True)]
        pt = [v for v in (masked_psnr(o, d, mk) for o, d, mk
                          in zip(frames, decoded, self.ours_masks, strict=True)) if v is not None]
        ss = [ms_ssim(frames[f], decoded[f])
              for f in range(0, self.n, max(1, self.ms_ssim_every))]
        return {"psnr": round(float(np.mean(ps)), 3),
                "psnr_task": round(float(np.mean(pt)), 3) if pt else None,
                "ms_ssim": round(float(np.mean(ss)), 5)}


# -- the run ----------------------------------------------------------------------------------

Job = tuple[str, str, Callable[[], tuple[int, list[np.ndarray]]]]


def _default_qualities(ours: OursPipeline, codec: str) -> tuple[int, ...]:
    """Ours' rate points: every point of the learned checkpoint, the video codec's steps, or
    WebP qualities for the classical codec."""
    points = ours.agent.codec.model.config.rate_points if codec == "learned" else 0
    return (tuple(range(1, points + 1)) if points else
            VIDEO_QUALITIES if codec == "video" else (30, 50, 75, 90))


def _jobs(ours: OursPipeline, chosen: list[str], qualities: Sequence[int], kept_by: str,
          sink_q: int, frames: list[np.ndarray], fps: float,
          crfs: dict[str, Sequence[int]], images: dict[str, Sequence[int]]) -> list[Job]:
    """(setting, point, run) for every rate point of every setting, in the order they run."""
    jobs: list[Job] = []
    for name in chosen:
        for q in qualities:
            jobs.append((name, f"q{q}", lambda q=q, name=name:
                         ours.run(q, OURS_MODE[name], keep=name == kept_by and q == sink_q)))
    for name, (enc, decs) in VIDEO.items():
        for c in crfs[name]:
            jobs.append((name, f"crf{c}", lambda enc=enc, decs=decs, c=c:
                         code_video(frames, fps, enc, c, decs)))
    for name, ext in (("jpeg", ".jpg"), ("webp", ".webp")):
        for q in images[name]:
            jobs.append((name, f"q{q}", lambda q=q, ext=ext: code_images(frames, q, ext)))
    return jobs


def _run_jobs(jobs: list[Job], scorer: TaskScorer, ours: OursPipeline, mid: int,
              prog: Progress, matches: dict[str, dict[str, FrameMatches]],
              ) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], Any]]:
    """Run and score every job: (settings with their points, the middle frame per point);
    each point's detection matches go into ``matches[setting][point]``. A missing AV1 encoder
    skips that setting with a note."""
    settings: dict[str, dict[str, Any]] = {}
    middles: dict[tuple[str, str], np.ndarray] = {}
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
        p = scorer.score(size, decoded, point)
        if scorer.last_matches is not None:
            matches.setdefault(name, {})[point] = scorer.last_matches
        if name in OURS:
            e = ours.edge_summary
            p["edge"] = {k: e[k] for k in ("bytes_by_substream", "encode_ms", "intra_frames",
                                           "region_modes", "regions_per_frame")}
        s["points"].append(p)
        middles[(name, point)] = decoded[mid].copy()
        shown = " ".join(f"{key} {p[key]}" for key in SCORES.values() if key in p)
        prog.update(f"{name} {point}: {p['kbps']} kbps, {shown}", force=True)
    return settings, middles


def _sink_throughput(ours: OursPipeline, label: str, sink_composers: Sequence[str],
                     diffusion_weights: Path | None,
                     prog: Progress) -> tuple[dict[str, float], dict[str, str]]:
    """Sink frames/s per composer on the packets ours kept (``label``: which, for progress);
    diffusion only with weights, skipped with a note where it cannot run."""
    assert ours.kept is not None, f"the {label} run kept no packets"
    meta, kept = ours.kept
    fps_sink: dict[str, float] = {}
    notes: dict[str, str] = {}
    composers: list[tuple[str, dict[str, Any]]] = [(c, {"type": c}) for c in sink_composers]
    if diffusion_weights is not None:
        composers.append(("diffusion", {"type": "diffusion", "base": str(diffusion_weights)}))
    else:
        notes["diffusion"] = ("skipped: no diffusion weights folder given "
                              "(run_bench_tasks(diffusion_weights=...))")
    for cname, ccfg in composers:
        prog.update(f"sink throughput: {cname} on {label}", force=True)
        try:
            fps_sink[cname] = sink_fps(meta, kept, ccfg)
        except Exception as e:  # noqa: BLE001 - diffusion may lack its packages / weights
            if cname != "diffusion":
                raise
            notes[cname] = f"skipped: {type(e).__name__}: {str(e)[:200]}"
    return fps_sink, notes


def _add_series(settings: dict[str, dict[str, Any]], tasks: Sequence[str]) -> None:
    """Each setting's per-point values also as lists per key (kbps, bpp, every score)."""
    keys = ["kbps", "bpp", *(v for v in SCORES.values()), *PERCEPTUAL]
    if "det" in tasks:
        keys.append("det_map")
    for s in settings.values():
        for key in keys:
            if any(key in p for p in s["points"]):
                s[key] = [p.get(key) for p in s["points"]]


def _compare(po: list[dict[str, Any]], pa: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Overlap, matched-rate ratios and BD-rate of ``po`` against anchor ``pa`` on ``key``."""
    bd, why = bd_rate(po, pa, key)
    rng = overlap(po, pa, key)
    return {"overlap": list(rng) if rng else None,
            "rate_ratio_at_matched": rate_ratios(po, pa, key),
            "bd_rate": None if bd is None else round(bd, 2), "bd_rate_note": why}


def _comparisons(settings: dict[str, dict[str, Any]], chosen: Sequence[str],
                 tasks: Sequence[str], matches: dict[str, dict[str, FrameMatches]],
                 boot: FrameBootstrap | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each of ours against each anchor on every score: (comparisons, the summary's BD-rates;
    the detection ones with their interval from ``boot``'s draws, when given)."""
    comparisons: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    scores = {short: key for short, key in SCORES.items()
              if short not in TASKS or short in tasks}
    for o in chosen:
        for a in ANCHORS:
            po, pa = settings[o]["points"], settings[a]["points"]
            comp: dict[str, Any] = {}
            if "det" in tasks:
                det = _compare(po, pa, "det_map50")
                comp.update({"det_map50_overlap": det["overlap"],
                             "rate_ratio_at_matched_det_map50": det["rate_ratio_at_matched"],
                             "bd_rate_det": det["bd_rate"], "bd_rate_note": det["bd_rate_note"]})
                if boot is not None and det["bd_rate"] is not None:
                    comp["bd_rate_det_bootstrap"] = ci = boot.interval(
                        po, pa, matches.get(o, {}), matches.get(a, {}), bd_rate)
                    summary[f"bd_rate_det_{OURS_INFIX[o]}vs_{a}_ci95"] = ci.get("ci95")
            comp["scores"] = {}
            for short, key in scores.items():
                comp["scores"][key] = c = _compare(po, pa, key)
                name = f"bd_rate_{short}_{OURS_INFIX[o]}vs_{a}"
                summary[name] = c["bd_rate"]
                summary[name + "_note"] = c["bd_rate_note"]
            comparisons[f"{o}_vs_{a}"] = comp
    return comparisons, summary


def _panels(settings: dict[str, dict[str, Any]], middles: dict[tuple[str, str], np.ndarray],
            original: np.ndarray, mid: int) -> list[tuple[str, np.ndarray]]:
    """The middle frame: original, then each coded setting at its lowest-rate point."""
    panels: list[tuple[str, np.ndarray]] = [(f"original (frame {mid})", original)]
    for name in ("ours_task", "ours_full", "ours_bg", "x265"):
        pts = settings.get(name, {}).get("points", [])
        if pts:
            lo = min(pts, key=lambda p: p["bytes"])
            panels.append((f"{name} {lo['point']} {lo['kbps']:g} kbps",
                           middles[(name, lo["point"])]))
    return panels


def _reference_info(sc: TaskScorer, ann_info: dict[str, Any] | None, ref_score: float,
                    pred_score: float) -> dict[str, Any]:
    """What the scores are measured against, for the result."""
    boxes = sum(sc.counts.values())
    if ann_info is not None:
        return {"annotations": ann_info, "boxes": boxes, "prediction_score_threshold": pred_score}
    return {"model": "nanodet (original frames)", "score_threshold": ref_score,
            "prediction_score_threshold": pred_score, "boxes": boxes}


def _scoring_info(cls_max_regions: int, ms_ssim_every: int) -> dict[str, str]:
    """How each score is measured, for the result."""
    return {
        "cls_top1": "efficientnet-lite0 top-1 on decoded == on original, per crop of the "
                    f"NanoDet reference boxes (largest {cls_max_regions} per frame)",
        "seg_miou": "person-mask (crops mode) on the reference person boxes: mean IoU per "
                    "person instance, decoded vs original (found on one side only: 0)",
        "psnr": "RGB, whole frame, mean over frames",
        "psnr_task": "RGB inside the union of ours' task regions, mean over frames",
        "ms_ssim": f"discover.sdk.rd.ms_ssim, RGB, whole frame, every {max(1, ms_ssim_every)}. frame"}


def _write(result: dict[str, Any], settings: dict[str, dict[str, Any]], out: Path,
           tasks: Sequence[str]) -> None:
    """``tasks.json`` and the rate plot of the headline score (det, else cls or seg)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tasks.json").write_text(json.dumps(result, indent=2))
    title = f"{Path(result['source']).name}, {result['frames']} frames"
    if "det" in tasks:
        plot(settings, out / "tasks_rate.png", title)
    else:
        key = "cls_top1" if "cls" in tasks else "seg_miou"
        plot(settings, out / "tasks_rate.png", title, key, f"{key} vs the same model on originals")
    result["plot"] = str(out / "tasks_rate.png")


def _scorer(src: str, frames: list[np.ndarray], fps: float, tasks: tuple[str, ...],
            max_frames: int | None, annotations: Path | None, ref_score: float,
            pred_score: float, min_refs: int, cls_max_regions: int, ms_ssim_every: int,
            perceptual: Sequence[str], prog: Progress, classes: Sequence[str] = ()
            ) -> tuple[TaskScorer, dict[str, Any] | None]:
    """The scorer with its references (NanoDet on the originals, or ``annotations``), task
    models and perceptual metrics loaded; and the annotations' info (None without)."""
    sc = TaskScorer(frames, fps, tasks, pred_score, ms_ssim_every, prog)
    ann_info = None
    if annotations is not None:
        scored, ref_full, ann_info = _annotation_refs(annotations, src, frames, fps, max_frames)
    else:
        scored, ref_full = list(range(len(frames))), sc.detect(frames, ref_score)
    sc.set_references(ref_full, scored, min_refs, classes)
    sc.load_task_models(cls_max_regions)
    sc.load_perceptual(perceptual)
    return sc, ann_info


def run_bench_tasks(source: str | None = None, max_frames: int | None = None,
                    out: Path = Path("out/bench"), quiet: bool = False, *, start: int = 0,
                    qualities: Sequence[int] | None = None,
                    codec: str = "classical", codec_options: dict[str, Any] | None = None,
                    checkpoint: Path | None = None,
                    x264_crfs: Sequence[int] = (23, 30, 37, 44, 51),
                    x265_crfs: Sequence[int] = (23, 30, 37, 44, 51),
                    av1_crfs: Sequence[int] = (30, 40, 50, 60),
                    jpeg_qualities: Sequence[int] = (10, 30, 50, 75, 90),
                    webp_qualities: Sequence[int] = (1, 10, 30, 60, 90),
                    rest_interval: int = 10, min_refs: int = 20, ref_score: float = 0.3,
                    pred_score: float = 0.05, tasks: Sequence[str] = TASKS,
                    cls_max_regions: int = 6, ms_ssim_every: int = 1,
                    sink_composers: Sequence[str] = ("direct", "background"),
                    diffusion_weights: Path | None = None,
                    annotations: Path | None = None,
                    perceptual: Sequence[str] = PERCEPTUAL,
                    ours_settings: Sequence[str] = OURS,
                    bootstrap: int = 200, classes: Sequence[str] = ()) -> dict[str, Any]:
    """Run the benchmark (module docstring); ``tasks``: any of ``det``, ``cls``, ``seg``;
    ``annotations``: a COCO-format file whose boxes replace NanoDet's on the originals as the
    reference (discover/bench/coco_annotations.py; only its annotated frames are scored);
    ``perceptual``: any of ``fid``, ``kid``, ``lpips``, ``dists`` (discover/bench/perceptual.py), each
    scored only where its weights are in the torch hub cache (skipped with a note otherwise);
    ``codec_options``: the codec's settings other than ``type`` (``edge.codec`` of a deployment,
    e.g. ``{"encoder": "av1"}``; ours' rate points set the quality);
    ``ours_settings``: which of ``ours_task``, ``ours_full``, ``ours_bg`` to run (a shorter run
    for the task-stream figure alone); ``bootstrap``: draws for the detection BD-rates' 95 %
    intervals (0: none); ``classes``: score detection on these classes only (default: every
    class with >= ``min_refs`` reference boxes)."""
    from discover.bench.ground import load_frames

    tasks = _check_tasks(tasks)
    chosen = _check_ours(ours_settings, bootstrap)
    src = source or str(SAMPLE_CLIP)
    prog = Progress("bench tasks", enabled=not quiet)
    t_start = time.monotonic()
    frames, fps = load_frames(src, start, max_frames)
    n, (h, w), fps, mid = len(frames), frames[0].shape[:2], fps or 10.0, len(frames) // 2
    prog.update(f"{n} frames {w}x{h} of {src}; tasks {','.join(tasks)}", force=True)
    sc, ann_info = _scorer(src, frames, fps, tasks, max_frames, annotations, ref_score,
                           pred_score, min_refs, cls_max_regions, ms_ssim_every, perceptual, prog,
                           classes)
    codec_cfg: dict[str, Any] = {**(codec_options or {}), "type": codec}
    if checkpoint:
        codec_cfg["checkpoint"] = str(checkpoint)
    ours = OursPipeline(src, frames, rest_interval, codec_cfg)
    sc.ours_masks = [region_mask(rs, w, h) for rs in ours.regions]
    qualities = _default_qualities(ours, codec) if qualities is None else qualities
    sink_q = qualities[len(qualities) // 2]
    kept_by = "ours_bg" if "ours_bg" in chosen else chosen[0]  # its packets feed the sink run
    jobs = _jobs(ours, chosen, qualities, kept_by, sink_q, frames, fps,
                 {"x264": x264_crfs, "x265": x265_crfs, "av1": av1_crfs},
                 {"jpeg": jpeg_qualities, "webp": webp_qualities})
    matches: dict[str, dict[str, FrameMatches]] = {}
    try:
        settings, middles = _run_jobs(jobs, sc, ours, mid, prog, matches)
        fps_sink, notes = _sink_throughput(ours, f"{kept_by} q{sink_q}", sink_composers,
                                           diffusion_weights, prog)
    finally:
        prog.done()
    _add_series(settings, tasks)
    boot = FrameBootstrap(len(sc.scored), bootstrap) if bootstrap else None
    comparisons, summary = _comparisons(settings, chosen, tasks, matches, boot)
    side_by_side(_panels(settings, middles, frames[mid], mid), out / "side_by_side.png")
    result = {
        "source": src, "start": start, "frames": n, "width": w, "height": h, "fps": fps,
        "tasks": list(tasks), "reference": _reference_info(sc, ann_info, ref_score, pred_score),
        "bd_rate_method": "pchip on each curve's rate-score front (sdk.rd)",
        "min_refs": min_refs, "classes_chosen": list(classes),
        "headline_classes": {c: sc.counts[c] for c in sc.headline},
        "excluded_classes": {c: k for c, k in sorted(sc.counts.items())
                             if c not in sc.headline},
        "reference_boxes_per_class": dict(sorted(sc.counts.items())),
        "scoring": _scoring_info(cls_max_regions, ms_ssim_every),
        "perceptual": {"metrics": list(perceptual), "skipped": sc.perceptual_notes,
                       "note": "FID/KID over the benchmarked frames (tens): comparisons between "
                               "settings on the same frames, not absolute figures; LPIPS (alex) "
                               "and DISTS on frames scaled to 256 px on the long side"},
        "ours_task_area_share": round(ours.area_share, 4),
        "ours_bg_rest": {"rest_interval": rest_interval,
                         "rest_on_change": ours.agent.cam.rest_on_change,
                         "rests_by_trigger": ours.rest_reasons},
        "ours_codec": {**codec_cfg, "checkpoint": ours.agent.codec.checkpoint_hash()},
        "settings": settings, "comparisons": comparisons, **summary,
        "sink_fps": fps_sink,
        "sink_fps_info": {"setting": kept_by, "point": f"q{sink_q}", "frames": n,
                          "task_model": "nanodet", "device": "cpu",
                          "cpu_count": os.cpu_count(), "notes": notes},
        "side_by_side": str(out / "side_by_side.png"),
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    _write(result, settings, out, tasks)
    return result
