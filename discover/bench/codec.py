"""``discover bench codec``: rate-distortion of the learned region codec against standard codecs
(issue 3).

Images (``--images DIR``; default: the 10 held-out OpenCV photos of
``sdk.codecs.learned.training.HELD_OUT_PHOTOS``, never trained on). For every image and every
rate point of the checkpoint:

* ``ours_full``: no regions, rest = the whole latent (``compress(img, [], send_rest=True)``);
* ``ours_region``: the task regions only (side + one substream per region, no rest), the
  boxes from the ``nanodet`` grounder with the ``detection`` profile's labels (or ``--boxes``),
  padded and snapped to the codec's 16 px grid as the edge agent does;

each coded by a fresh encoder and decoded by a fresh decoder (an image is a stream of one
frame, so nothing is predicted from another image). Anchors on the same images: JPEG and WebP
(OpenCV) at several qualities, x265 and AV1 (PyAV libx265 / libsvtav1, one intra frame,
yuv420p) at several CRFs. Bits are the real payload bytes; bits per pixel over the frame.

Distortion (sdk.rd): PSNR over the RGB samples and MS-SSIM (5 scales, per RGB channel,
averaged), for the whole frame and inside the task regions (PSNR over the union of the boxes;
MS-SSIM as the area-weighted mean over the box crops).

Comparison: Bjontegaard delta rate of ``ours_full`` against each anchor, for PSNR and for
MS-SSIM in dB (-10 log10(1 - MS-SSIM)), cubic fit of log10(bpp) over quality, over the
overlapping quality range only. Headline figures are computed per image and averaged over the
images where the ranges overlap (the note says how many); the same on the mean curves (and
with the piecewise-cubic fit) is in ``comparisons``. No overlap: null and a note.

Video (``--video FILE [--max-frames N]``): one encoder and one decoder per rate point, frames
in order (temporal prediction as the codec does it), boxes from the grounder on every frame;
``full`` sends the regions and the rest on every frame, ``task`` only the regions. Per frame:
side / task / rest bits, PSNR of the decode and inside the task regions. Anchors: x264 and x265
coding the same frames as one video at several CRFs; BD-rate of ours (full) vs each on PSNR.

Writes ``<out>/codec.json`` (everything, per image and per frame) and the rate-distortion plots
``<out>/rd_*.png`` (OpenCV); returns a summary without the per-image / per-frame detail.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from discover.progress import Progress
from discover.sdk.errors import DiscoverError
from discover.sdk.rd import bd_quality, bd_rate, masked_psnr, ms_ssim, msssim_db, psnr
from discover.sdk.regions import (
    Region,
    area_share,
    merge_overlaps,
    pad_and_clip,
    region_mask,
    select_regions,
)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_ANCHORS = ("jpeg", "webp", "x265", "av1")
VIDEO_ANCHORS = ("x264", "x265")
#: metric name in the JSON keys -> the point field it is computed on
BD_METRICS = {"psnr": "psnr", "msssim": "msssim_db"}
TASK = "detection"
COLORS = {"ours_full": (0, 140, 255), "ours_region": (0, 0, 220), "ours_task": (0, 0, 220),
          "jpeg": (100, 100, 100), "webp": (0, 170, 170), "x264": (200, 120, 0),
          "x265": (160, 0, 160), "av1": (0, 150, 0)}
BD_NOTE = ("per-image curves, cubic fit of log10(bpp) over {metric}, overlapping range only, "
           "mean over the images with an overlap")

Point = dict[str, Any]


# -- inputs -----------------------------------------------------------------------------------

def list_images(folder: Path | None) -> list[Path]:
    """The benchmark's images: every image file in ``folder`` (sorted), or the held-out
    OpenCV photos. One DiscoverError line if there are none."""
    if folder is None:
        from discover.sdk.codecs.learned.training import HELD_OUT_PHOTOS, OPENCV_DATA

        paths = [OPENCV_DATA / n for n in HELD_OUT_PHOTOS]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise DiscoverError(f"the held-out photos are missing from {OPENCV_DATA} ("
                                f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); "
                                "apt-get install opencv-doc, or pass --images DIR")
        return paths
    if not folder.exists():
        raise DiscoverError(f"--images {str(folder)!r}: no such folder; pass a folder of PNG or "
                            "JPEG images")
    if not folder.is_dir():
        raise DiscoverError(f"--images {str(folder)!r} is not a folder; pass a folder of PNG or "
                            "JPEG images")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise DiscoverError(f"--images {str(folder)!r} holds no image files "
                            f"({', '.join(IMAGE_EXTS)})")
    return paths


def read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DiscoverError(f"cannot read image {str(path)!r}: not an image OpenCV can decode; "
                            "remove it from the folder or convert it to PNG")
    return img


def load_boxes(path: Path, names: Sequence[str]) -> dict[str, list[tuple[float, ...]]]:
    """``{"<image file name>": [[x0, y0, x1, y1], ...]}`` checked entry by entry."""
    where = f"--boxes {str(path)!r}"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DiscoverError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DiscoverError(f"{where}: cannot read it ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise DiscoverError(f"{where} is not valid JSON (line {e.lineno}: {e.msg}); expected "
                            '{"image.jpg": [[x0, y0, x1, y1], ...]}') from None
    if not isinstance(data, dict):
        raise DiscoverError(f"{where}: expected a JSON object mapping image file names to box "
                            f"lists, got {type(data).__name__}")
    out: dict[str, list[tuple[float, ...]]] = {}
    for name, boxes in data.items():
        if not isinstance(boxes, list):
            raise DiscoverError(f"{where}: {name!r} must map to a list of [x0, y0, x1, y1] boxes")
        kept = []
        for i, b in enumerate(boxes):
            ok = (isinstance(b, list) and len(b) == 4
                  and all(isinstance(v, int | float) and not isinstance(v, bool)
                          and math.isfinite(v) for v in b))
            if not ok:
                raise DiscoverError(f"{where}: {name!r} box {i} is {json.dumps(b)[:60]}; each box "
                                    "must be [x0, y0, x1, y1] in pixels")
            if b[2] <= b[0] or b[3] <= b[1]:
                raise DiscoverError(f"{where}: {name!r} box {i} {b} is empty; need x1 > x0 and "
                                    "y1 > y0")
            kept.append(tuple(float(v) for v in b))
        out[name] = kept
    if names and not set(out) & set(names):
        raise DiscoverError(f"{where} names none of the images ({', '.join(list(names)[:3])} "
                            "...); its keys must be the image file names")
    return out


# -- regions (as the edge agent builds them, with the same sdk.regions helpers) ----------------

def regions_from_detections(dets: Sequence[Any], labels: set[str], width: int, height: int,
                            align: int, margin: float, min_score: float,
                            dedupe_iou: float = 0.6, max_regions: int = 256) -> list[Region]:
    """The task's regions exactly as the edge agent builds them (``select_regions``)."""
    return select_regions(dets, {TASK: labels}, width, height, align=align, margin=margin,
                          min_score=min_score, dedupe_iou=dedupe_iou, max_regions=max_regions)


def regions_from_boxes(boxes: Sequence[Sequence[float]], width: int, height: int, align: int,
                       margin: float) -> list[Region]:
    """Given boxes, padded and snapped like the grounder's; boxes outside the frame drop out."""
    out: list[Region] = []
    for b in boxes:
        box = pad_and_clip(b, margin, width, height, align)
        if box is not None:
            out.append(Region(len(out), box, "object", 1.0, (TASK,)))
    return merge_overlaps(out)


class BoxSource:
    """Task regions per image or frame: a boxes file, or a grounder with the task's labels."""

    def __init__(self, align: int, boxes: dict[str, list[tuple[float, ...]]] | None,
                 grounder: str) -> None:
        from discover.sdk.grounders import GROUNDERS

        self.align, self.boxes = align, boxes
        self.grounder_key = grounder
        cfg = GROUNDERS.parse_config(grounder)
        self.margin, self.min_score = cfg.margin, cfg.min_score
        self._cfg = cfg
        self._grounder: Any = None
        self._labels: list[str] = []

    @property
    def described(self) -> str:
        return "boxes file" if self.boxes is not None else f"{self.grounder_key} grounder"

    def fresh(self) -> None:
        """A new grounder instance (grounders keep per-camera state between frames)."""
        self._grounder = None

    def regions(self, img: np.ndarray, name: str | None = None) -> list[Region]:
        h, w = img.shape[:2]
        if self.boxes is not None and name is not None:
            return regions_from_boxes(self.boxes.get(name, []), w, h, self.align, self.margin)
        if self._grounder is None:
            from discover.ground import task_labels
            from discover.sdk.grounders import GROUNDERS

            self._labels = task_labels([TASK])
            self._grounder = GROUNDERS.create(self._cfg)
        dets = self._grounder.ground(img, self._labels)
        return regions_from_detections(dets, set(self._labels), w, h, self.align, self.margin,
                                       self.min_score)


# -- our codec --------------------------------------------------------------------------------

class Ours:
    """The learned codec at every rate point of one checkpoint (or an in-memory model)."""

    def __init__(self, checkpoint: Path | None = None, model: Any = None) -> None:
        import discover.sdk.codecs.learned  # noqa: F401 - registers the codec
        from discover.sdk.codecs.learned import checkpoint as ckpt
        from discover.sdk.codecs.learned.codec import DEFAULT_CHECKPOINT

        if model is None:
            folder = checkpoint or ckpt.CHECKPOINT_ROOT / DEFAULT_CHECKPOINT
            loaded = ckpt.load_pretrained(folder)
            model, self.hash, self.source = loaded.model, loaded.hash, str(folder)
        else:
            self.hash, self.source = None, "in-memory model"
        if model.config.head != "pixels":
            raise DiscoverError(f"checkpoint {self.source} has head {model.config.head!r}: it "
                                "makes the diffusion latent, not pixels; bench codec needs a "
                                "'pixels' checkpoint")
        self.model = model
        self.points = int(model.config.rate_points)
        probe = self.codec(1)
        self.hash = self.hash or probe.checkpoint_hash()
        self.align = probe.align
        self.default_quality = self.points // 2 + 1  # LearnedConfig.quality=None

    def codec(self, quality: int) -> Any:
        from discover.sdk.codecs.base import CODECS

        return CODECS.create({"type": "learned", "quality": quality}, model=self.model)

    def warm_up(self) -> None:
        """One small frame through both ends, so the first timed call is not the first ever."""
        img = np.full((64, 64, 3), 128, np.uint8)
        enc, dec = self.codec(1), self.codec(1)
        coded = enc.compress(img, [], True)
        dec.decompress({**coded, "table": [], "size": (64, 64)})


def _code(enc: Any, dec: Any, img: np.ndarray, regions: list[Region],
          send_rest: bool) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """Code and decode one frame: (bits per substream and timings, decoded frame, coded)."""
    h, w = img.shape[:2]
    t0 = time.perf_counter()
    coded = enc.compress(img, regions, send_rest)
    t1 = time.perf_counter()
    out = dec.decompress({"side": coded["side"], "regions": coded["regions"],
                          "rest": coded.get("rest"), "table": regions, "size": (w, h)})
    t2 = time.perf_counter()
    bits = {"side_bits": 8 * len(coded["side"]),
            "task_bits": 8 * sum(len(p) for p in coded["regions"].values()),
            "rest_bits": 8 * len(coded.get("rest") or b""),
            "enc_ms": 1000 * (t1 - t0), "dec_ms": 1000 * (t2 - t1),
            # our own stream, nothing lost: anything here is a codec bug the figures must show
            "decode_errors": len(out.get("errors") or {})}
    return bits, out["x_hat"], coded


# -- anchors ----------------------------------------------------------------------------------

def _even(img: np.ndarray) -> np.ndarray:
    """Edge-replicate one row / column where needed: yuv420p encoders want even sizes."""
    h, w = img.shape[:2]
    return np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else img


def _video_anchor(frames: list[np.ndarray], fps: float, name: str,
                  crf: int) -> tuple[int, list[np.ndarray]]:
    from discover.bench.tasks import VIDEO, code_video

    enc, decs = VIDEO[name]
    h, w = frames[0].shape[:2]
    size, out = code_video([_even(f) for f in frames], fps, enc, crf, decs)
    return size, [np.ascontiguousarray(f[:h, :w]) for f in out]


#: still-image encoder options: no x265 version/options SEI (about 2 KB per stream, which a
#: still-image format such as BPG or HEIF leaves out too), and a slower SVT-AV1 preset than the
#: video benchmarks use (one frame is cheap, and the anchor should be a strong one)
STILL_OPTIONS = {"libx265": {"x265-params": "log-level=error:info=0"},
                 "libsvtav1": {"preset": "4"}}


def _intra_still(img: np.ndarray, name: str, crf: int) -> tuple[int, np.ndarray]:
    """One intra frame (yuv420p) through x265 or SVT-AV1 with PyAV: (bytes, decoded BGR)."""
    import os
    from fractions import Fraction

    import av

    from discover.bench.tasks import VIDEO

    encoder, decoders = VIDEO[name]
    h, w = img.shape[:2]
    even = _even(img)
    enc = av.CodecContext.create(encoder, "w")
    enc.width, enc.height, enc.pix_fmt = even.shape[1], even.shape[0], "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, 1), Fraction(1, 1)
    if encoder == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # errors only, not the config banner
    enc.options = {"crf": str(crf), **STILL_OPTIONS.get(encoder, {})}
    enc.open()
    vf = av.VideoFrame.from_ndarray(even, format="bgr24").reformat(format="yuv420p")
    vf.pts = 0
    packets = [*enc.encode(vf), *enc.encode(None)]
    size = sum(p.size for p in packets) + len(enc.extradata or b"")
    errors = []
    for dname in decoders:
        try:
            dec = av.CodecContext.create(dname, "r")
            if enc.extradata:
                dec.extradata = enc.extradata
            dec.open()
            frames = [f for p in [*packets, None] for f in dec.decode(p)]
        except Exception as e:  # noqa: BLE001 - try the next decoder
            errors.append(f"{dname}: {e}")
            continue
        if frames:
            return size, np.ascontiguousarray(frames[0].to_ndarray(format="bgr24")[:h, :w])
        errors.append(f"{dname}: no frame decoded")
    raise RuntimeError(f"{name}: could not decode ({'; '.join(errors)})")


def _still_anchor(img: np.ndarray, name: str, setting: int) -> tuple[int, np.ndarray]:
    """One image through an anchor codec: (bytes, decoded BGR)."""
    if name in ("jpeg", "webp"):
        ext, flag = (".jpg", cv2.IMWRITE_JPEG_QUALITY) if name == "jpeg" else \
            (".webp", cv2.IMWRITE_WEBP_QUALITY)
        ok, buf = cv2.imencode(ext, img, [flag, int(setting)])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {name}")
        return len(buf), cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return _intra_still(img, name, int(setting))


# -- measuring --------------------------------------------------------------------------------

def measure(orig: np.ndarray, dec: np.ndarray, regions: Sequence[Region], mask: np.ndarray,
            msssim: bool = True) -> dict[str, Any]:
    """PSNR / MS-SSIM of the frame and inside the regions (None without regions)."""
    m: dict[str, Any] = {"psnr": psnr(orig, dec), "region_psnr": masked_psnr(orig, dec, mask)}
    if msssim:
        v = ms_ssim(orig, dec)
        m.update(msssim=v, msssim_db=msssim_db(v))
        if regions:
            vals, areas = [], []
            for r in regions:
                x0, y0, x1, y1 = r.box
                vals.append(ms_ssim(orig[y0:y1, x0:x1], dec[y0:y1, x0:x1]))
                areas.append(r.area)
            m["region_msssim"] = float(np.average(vals, weights=areas))
        else:
            m["region_msssim"] = None
    return m


def _rounded(p: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in p.items():
        if isinstance(v, float):
            v = round(v, 6 if k in ("bpp", "msssim", "region_msssim") else 3)
        out[k] = v
    return out


def _mean_curve(per_image: list[dict[str, Any]], setting: str) -> list[Point]:
    """Mean over images of every numeric field, per point label (in the first image's order)."""
    labels: list[str] = []
    for im in per_image:
        for p in im["settings"].get(setting, {}).get("points", []):
            if p["point"] not in labels:
                labels.append(p["point"])
    out = []
    for label in labels:
        ps = [p for im in per_image for p in im["settings"].get(setting, {}).get("points", [])
              if p["point"] == label]
        mean: Point = {"point": label, "images": len(ps)}
        keys = dict.fromkeys(k for p in ps for k in p if k != "point")
        for k in keys:
            vals = [p[k] for p in ps if isinstance(p.get(k), int | float)]
            if k == "decode_errors":
                mean[k] = int(sum(vals))
            elif k == "quality" and vals:
                mean[k] = int(vals[0])
            elif k in ("region_psnr", "region_msssim") or vals:
                mean[k] = float(np.mean(vals)) if vals else None
        out.append(_rounded(mean))
    return out


def _curve(points: Sequence[Point], key: str, rate: str = "bpp") -> tuple[list[float], list[float]]:
    ps = [p for p in points if p.get(key) is not None and p.get(rate) is not None]
    return [p[rate] for p in ps], [p[key] for p in ps]


def _bd_per_image(per_image: list[dict[str, Any]], test: str, anchor: str,
                  key: str) -> tuple[float | None, str, list[float | None]]:
    """BD-rate of ``test`` vs ``anchor`` on each image's curves, and their mean."""
    values: list[float | None] = []
    reasons: list[str] = []
    for im in per_image:
        s = im["settings"]
        if anchor not in s or test not in s or "skipped" in s[anchor]:
            values.append(None)
            reasons.append(s.get(anchor, {}).get("skipped", f"{anchor} did not run"))
            continue
        ra, qa = _curve(s[anchor]["points"], key)
        rt, qt = _curve(s[test]["points"], key)
        v, why = bd_rate(ra, qa, rt, qt)
        values.append(v)
        if v is None:
            reasons.append(why)
    got = [v for v in values if v is not None]
    metric = "MS-SSIM dB" if key == "msssim_db" else key.upper()
    base = BD_NOTE.format(metric=metric)
    if not got:
        return None, f"no image has an overlapping {metric} range with {anchor} ({reasons[0]})", \
            values
    note = f"{base}: {len(got)} of {len(values)} images"
    if reasons:
        note += f"; left out: {reasons[0]}"
    return float(np.mean(got)), note, values


def _r2(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _bd_curves(test: Sequence[Point], anchor: Sequence[Point], key: str,
               rate: str = "bpp") -> dict[str, Any]:
    """BD-rate (cubic and piecewise cubic) and BD-quality of two curves."""
    ra, qa = _curve(anchor, key, rate)
    rt, qt = _curve(test, key, rate)
    cubic, note = bd_rate(ra, qa, rt, qt)
    pchip, _ = bd_rate(ra, qa, rt, qt, method="pchip")
    dq, dq_note = bd_quality(ra, qa, rt, qt)
    return {"bd_rate": _r2(cubic), "bd_rate_pchip": _r2(pchip), "note": note,
            "bd_quality": None if dq is None else round(dq, 3), "bd_quality_note": dq_note}


# -- plot -------------------------------------------------------------------------------------

def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    step = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(step)) if step > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= step)
    return [t for t in np.arange(math.ceil(lo / step) * step, hi + 1e-9, step)]


def plot_rd(series: dict[str, Sequence[tuple[float, float]]], path: Path, title: str,
            ylabel: str, xlabel: str = "bits per pixel (log)") -> None:
    """Quality against rate (log axis) per setting, drawn with OpenCV (no matplotlib)."""
    w, h, ml, mr, mt, mb = 900, 560, 70, 170, 50, 60
    img = np.full((h, w, 3), 255, np.uint8)
    pts = [(x, y) for s in series.values() for x, y in s if x and x > 0 and y is not None]
    path.parent.mkdir(parents=True, exist_ok=True)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (ml, 25), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if not pts:
        cv2.putText(img, "no points", (ml + 300, h // 2), font, 0.7, (0, 0, 0), 1)
        cv2.imwrite(str(path), img)
        return
    xlo = math.log10(min(p[0] for p in pts)) - 0.05
    xhi = math.log10(max(p[0] for p in pts)) + 0.05
    ylo, yhi = min(p[1] for p in pts), max(p[1] for p in pts)
    pad = max(0.05 * (yhi - ylo), 0.5)
    ylo, yhi = ylo - pad, yhi + pad

    def xy(x: float, y: float) -> tuple[int, int]:
        px = ml + (math.log10(x) - xlo) / (xhi - xlo) * (w - ml - mr)
        py = h - mb - (y - ylo) / (yhi - ylo) * (h - mt - mb)
        return int(round(px)), int(round(py))

    cv2.rectangle(img, (ml, mt), (w - mr, h - mb), (0, 0, 0), 1)
    for e in range(math.floor(xlo), math.ceil(xhi) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if xlo <= math.log10(v) <= xhi:
                x = xy(v, ylo)[0]
                cv2.line(img, (x, mt), (x, h - mb), (225, 225, 225), 1)
                cv2.putText(img, f"{v:g}", (x - 12, h - mb + 18), font, 0.4, (0, 0, 0), 1)
    for t in _nice_ticks(ylo, yhi):
        y = xy(10 ** xlo, t)[1]
        cv2.line(img, (ml, y), (w - mr, y), (225, 225, 225), 1)
        cv2.putText(img, f"{t:g}", (8, y + 4), font, 0.4, (0, 0, 0), 1)
    cv2.putText(img, xlabel, (ml + 280, h - 20), font, 0.5, (0, 0, 0), 1)
    cv2.putText(img, ylabel, (8, mt - 12), font, 0.5, (0, 0, 0), 1)
    legend_y = mt + 10
    for name, s in series.items():
        line = [xy(x, y) for x, y in sorted(s) if x and x > 0 and y is not None]
        if not line:
            continue
        col = COLORS.get(name, (0, 0, 0))
        cv2.polylines(img, [np.array(line, np.int32)], False, col, 2, cv2.LINE_AA)
        for p in line:
            cv2.circle(img, p, 4, col, -1, cv2.LINE_AA)
        cv2.line(img, (w - mr + 12, legend_y), (w - mr + 40, legend_y), col, 2)
        cv2.putText(img, name, (w - mr + 46, legend_y + 4), font, 0.45, col, 1)
        legend_y += 20
    if not cv2.imwrite(str(path), img):
        raise DiscoverError(f"cannot write {path}; check the --out folder is writable")


def _series(curves: dict[str, Sequence[Point]], key: str,
            rate: str = "bpp") -> dict[str, list[tuple[float, float]]]:
    return {n: [(p[rate], p[key]) for p in ps if p.get(key) is not None]
            for n, ps in curves.items()}


# -- images -----------------------------------------------------------------------------------

def _bench_image(img: np.ndarray, regions: list[Region], ours: Ours, qualities: Sequence[int],
                 anchors: dict[str, Sequence[int]], log: Callable[[str], None]) -> dict[str, Any]:
    h, w = img.shape[:2]
    pixels = w * h
    mask = region_mask(regions, w, h)
    settings: dict[str, dict[str, Any]] = {"ours_full": {"points": []},
                                           "ours_region": {"points": []}}
    for q in qualities:
        for name, full in (("ours_full", True), ("ours_region", False)):
            bits, dec, _ = _code(ours.codec(q), ours.codec(q), img, [] if full else regions,
                                 full)
            total = bits["side_bits"] + bits["task_bits"] + bits["rest_bits"]
            settings[name]["points"].append(_rounded({
                "point": f"q{q}", "quality": q, "bits": total, "bpp": total / pixels, **bits,
                **measure(img, dec, regions, mask)}))
    for name, values in anchors.items():
        s = settings[name] = {"points": []}
        for v in values:
            try:
                size, dec = _still_anchor(img, name, v)
            except Exception as e:  # noqa: BLE001 - an encoder missing here skips that anchor
                s["skipped"] = f"{type(e).__name__}: {str(e)[:160]}"
                log(f"{name}: skipped ({s['skipped'][:80]})")
                break
            label = f"q{v}" if name in ("jpeg", "webp") else f"crf{v}"
            s["points"].append(_rounded({"point": label, "bits": 8 * size,
                                         "bpp": 8 * size / pixels,
                                         **measure(img, dec, regions, mask)}))
    return settings


def _image_summary(per_image: list[dict[str, Any]], ours: Ours,
                   anchors: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    comparisons: dict[str, Any] = {}
    curves = {s: _mean_curve(per_image, s) for s in ("ours_full", "ours_region", *anchors)}
    for a in IMAGE_ANCHORS:
        for metric, key in BD_METRICS.items():
            name = f"bd_rate_vs_{a}_{metric}"
            if a not in anchors:
                summary[name], summary[name + "_note"] = None, f"{a} was not run"
                continue
            v, note, values = _bd_per_image(per_image, "ours_full", a, key)
            summary[name] = None if v is None else round(v, 2)
            summary[name + "_note"] = note
            comparisons[f"ours_full_vs_{a}_{metric}"] = {
                "per_image": {im["name"]: None if x is None else round(x, 2)
                              for im, x in zip(per_image, values, strict=True)},
                "mean_curve": _bd_curves(curves["ours_full"], curves[a], key)}
    dq = ours.default_quality
    shares = []
    for im in per_image:
        pts = {p["point"]: p for p in im["settings"]["ours_full"]["points"]}
        reg = {p["point"]: p for p in im["settings"]["ours_region"]["points"]}
        key = f"q{dq}"
        if key in pts and key in reg and pts[key]["bits"] > 0:
            shares.append(reg[key]["bits"] / pts[key]["bits"])
    summary["region_bits_share"] = round(float(np.mean(shares)), 4) if shares else None
    summary["region_bits_share_note"] = (
        f"(side + task substreams in region mode) / (full-frame code), quality {dq} (the "
        f"codec's default), mean over {len(shares)} images" if shares
        else f"quality {dq} (the codec's default) was not run")
    summary["region_area_share"] = round(float(np.mean([im["region_area_share"]
                                                        for im in per_image])), 4)
    summary["region_coded_area_share"] = round(float(np.mean(
        [im["region_coded_area_share"] for im in per_image])), 4)
    at_default = next((p for p in curves["ours_full"] if p["point"] == f"q{dq}"), None)
    summary["enc_ms"] = at_default["enc_ms"] if at_default else None
    summary["dec_ms"] = at_default["dec_ms"] if at_default else None
    summary["ours"] = {"full": curves["ours_full"], "region": curves["ours_region"]}
    summary["anchors"] = {a: curves[a] for a in anchors}
    summary["comparisons"] = comparisons
    return summary


# -- video ------------------------------------------------------------------------------------

def _video_point(label: str, per_frame: list[dict[str, Any]], total_bits: int, n: int, w: int,
                 h: int, seconds: float) -> Point:
    """One rate point of the video: its bits and rate, the per-frame figures averaged."""
    p: Point = {"point": label, "bits": total_bits, "bpp": total_bits / (n * w * h),
                "kbps": total_bits / 1000 / seconds}
    for k in ("psnr", "region_psnr", "side_bits", "task_bits", "rest_bits", "enc_ms", "dec_ms"):
        vals = [f[k] for f in per_frame if f.get(k) is not None]
        if vals:
            p[k] = float(np.mean(vals))
    if any("intra" in f for f in per_frame):
        p["intra_frames"] = sum(f.get("intra") is not False for f in per_frame)
        p["skipped_regions"] = sum(f.get("skipped_regions", 0) for f in per_frame)
    return _rounded(p)


def _video_ours(frames: list[np.ndarray], fps: float, ours: Ours, qualities: Sequence[int],
                regions: list[list[Region]], masks: list[np.ndarray],
                prog: Progress) -> tuple[dict[str, list[Point]], dict[str, Any]]:
    """Ours on the frames in order, full (rest every frame) and task only, at each quality:
    (points per mode, per-frame figures per mode and quality)."""
    n, (h, w) = len(frames), frames[0].shape[:2]
    ours_pts: dict[str, list[Point]] = {"full": [], "task": []}
    detail: dict[str, Any] = {}
    for q in qualities:
        for mode in ("full", "task"):
            enc, dec = ours.codec(q), ours.codec(q)
            per_frame = []
            for i, (img, rs) in enumerate(zip(frames, regions, strict=True)):
                bits, x_hat, coded = _code(enc, dec, img, rs, send_rest=mode == "full")
                per_frame.append(_rounded({
                    "frame": i, "regions": len(rs), "intra": coded.stats.intra,
                    "skipped_regions": coded.stats.modes.get("skip", 0), **bits,
                    **measure(img, x_hat, rs, masks[i], msssim=False)}))
            total = sum(f["side_bits"] + f["task_bits"] + f["rest_bits"] for f in per_frame)
            ours_pts[mode].append(_video_point(f"q{q}", per_frame, total, n, w, h, n / fps))
            detail[f"{mode}_q{q}"] = per_frame
            prog.update(f"video ours {mode} q{q}: {ours_pts[mode][-1]['bpp']:.4f} bpp, "
                        f"PSNR {ours_pts[mode][-1]['psnr']:.2f}", force=True)
    return ours_pts, detail


def _video_anchors(frames: list[np.ndarray], fps: float, crfs: dict[str, Sequence[int]],
                   regions: list[list[Region]], masks: list[np.ndarray],
                   prog: Progress) -> dict[str, dict[str, Any]]:
    """The frames as x264 / x265 video at each CRF; a missing encoder skips its anchor."""
    n, (h, w) = len(frames), frames[0].shape[:2]
    anchors: dict[str, dict[str, Any]] = {}
    for name, values in crfs.items():
        s = anchors[name] = {"points": []}
        for c in values:
            try:
                size, decoded = _video_anchor(frames, fps, name, c)
            except Exception as e:  # noqa: BLE001 - a missing encoder skips the anchor
                s["skipped"] = f"{type(e).__name__}: {str(e)[:160]}"
                break
            per_frame = [measure(f, d, rs, m, msssim=False)
                         for f, d, rs, m in zip(frames, decoded, regions, masks, strict=True)]
            s["points"].append(_video_point(f"crf{c}", per_frame, 8 * size, n, w, h, n / fps))
        prog.update(f"video {name}: {len(s['points'])} points", force=True)
    return anchors


def _bench_video(source: str, frames: list[np.ndarray], fps: float, ours: Ours,
                 qualities: Sequence[int], crfs: dict[str, Sequence[int]],
                 box_source: BoxSource, prog: Progress) -> dict[str, Any]:
    n, (h, w) = len(frames), frames[0].shape[:2]
    prog.update(f"video: {n} frames {w}x{h} of {source}; grounding", force=True)
    box_source.fresh()
    regions = [box_source.regions(f) for f in frames]
    masks = [region_mask(rs, w, h) for rs in regions]
    ours_pts, detail = _video_ours(frames, fps, ours, qualities, regions, masks, prog)
    anchors = _video_anchors(frames, fps, crfs, regions, masks, prog)
    out: dict[str, Any] = {
        "source": source, "frames": n, "width": w, "height": h, "fps": fps,
        "boxes": box_source.grounder_key,
        "region_area_share": round(float(np.mean([area_share(rs, w, h) for rs in regions])), 4),
        "ours": ours_pts, "anchors": anchors, "per_frame": detail}
    for a in VIDEO_ANCHORS:
        pts = anchors.get(a, {}).get("points", [])
        c = _bd_curves(ours_pts["full"], pts, "psnr")
        out[f"bd_rate_vs_{a}_psnr"], out[f"bd_rate_vs_{a}_psnr_note"] = c["bd_rate"], (
            "ours full (regions + rest every frame) vs the clip as video, mean PSNR per frame, "
            f"cubic fit of log10(bpp): {c['note']}" if c["bd_rate"] is not None
            else anchors.get(a, {}).get("skipped") or c["note"])
        out.setdefault("comparisons", {})[f"full_vs_{a}_psnr"] = c
        out["comparisons"][f"task_vs_{a}_region_psnr"] = _bd_curves(ours_pts["task"], pts,
                                                                    "region_psnr")
    return out


# -- run --------------------------------------------------------------------------------------

def _read_inputs(images: Path | None, boxes: Path | None, video: str | None,
                 max_frames: int | None, grounder: str) -> tuple[
                     list[Path], list[np.ndarray], dict[str, Any] | None,
                     tuple[list[np.ndarray], float] | None]:
    """(image paths, the images, task boxes per image name or None, the video's frames and
    fps or None); every bad argument or unreadable input fails here, before any work."""
    if max_frames is not None and video is None:
        raise DiscoverError("--max-frames applies to --video; pass --video FILE too")
    if max_frames is not None and max_frames < 1:
        raise DiscoverError(f"--max-frames must be at least 1 (got {max_frames})")
    if video is not None and not Path(video).exists() and "://" not in video:
        raise DiscoverError(f"--video {video!r}: file not found")
    paths = list_images(images)
    pictures = [read_image(p) for p in paths]  # an unreadable file fails before any work
    box_map = load_boxes(boxes, [p.name for p in paths]) if boxes is not None else None
    from discover.sdk.grounders import GROUNDERS

    GROUNDERS.parse_config(grounder)  # an unknown grounder fails before any work
    clip: tuple[list[np.ndarray], float] | None = None
    if video is not None:  # read it now: a bad file fails before the long image run
        from discover.bench.ground import load_frames

        frames, fps = load_frames(video, 0, max_frames)
        clip = (frames, fps or 10.0)
    return paths, pictures, box_map, clip


def _qualities(ours: Ours, qualities: Sequence[int] | None) -> list[int]:
    """The rate points to run: those asked for (checked against the checkpoint), else all."""
    qs = list(qualities or range(1, ours.points + 1))
    bad = [q for q in qs if not 1 <= q <= ours.points]
    if bad:
        raise DiscoverError(f"qualities {bad} are out of range: the checkpoint has rate points "
                            f"1..{ours.points}")
    return qs


def _run_images(paths: list[Path], pictures: list[np.ndarray], box_source: BoxSource,
                ours: Ours, qs: list[int], anchor_values: dict[str, Sequence[int]],
                prog: Progress) -> list[dict[str, Any]]:
    """Every image through ours and the anchors: per image its regions and settings."""
    per_image: list[dict[str, Any]] = []
    for k, (path, img) in enumerate(zip(paths, pictures, strict=True), 1):
        h, w = img.shape[:2]
        regions = box_source.regions(img, path.name)
        prog.update(f"[{k}/{len(paths)}] {path.name} {w}x{h}, {len(regions)} regions "
                    f"({box_source.described})", force=True)
        settings = _bench_image(img, regions, ours, qs, anchor_values,
                                lambda m: prog.update(m, force=True))
        per_image.append({"name": path.name, "width": w, "height": h,
                          "regions": [r.to_json() for r in regions],
                          "region_area_share": round(area_share(regions, w, h), 4),
                          # overlapping boxes code their shared cells once per region
                          "region_coded_area_share": round(
                              sum(r.area for r in regions) / (w * h), 4),
                          "settings": settings})
    return per_image


def _plots(result: dict[str, Any], n_images: int, video: str | None, out: Path) -> list[str]:
    """The rate-distortion plots of the images (and the video); their paths."""
    plots = []

    def draw(name: str, series: dict[str, list[tuple[float, float]]], title: str,
             ylabel: str) -> None:
        plot_rd(series, out / name, title, ylabel)
        plots.append(str(out / name))

    curves = {"ours_full": result["ours"]["full"], "ours_region": result["ours"]["region"],
              **result["anchors"]}
    what = f"{n_images} images, mean per setting"
    draw("rd_psnr.png", _series({k: v for k, v in curves.items() if k != "ours_region"}, "psnr"),
         f"whole-frame PSNR, {what}", "PSNR (dB)")
    draw("rd_msssim.png", _series({k: v for k, v in curves.items() if k != "ours_region"},
                                  "msssim_db"), f"whole-frame MS-SSIM, {what}", "MS-SSIM (dB)")
    draw("rd_region_psnr.png", _series(curves, "region_psnr"),
         f"PSNR inside the task regions, {what}", "region PSNR (dB)")
    if video is not None:
        v = result["video"]
        vc = {"ours_full": v["ours"]["full"], **{a: s["points"] for a, s in v["anchors"].items()}}
        draw("rd_video_psnr.png", _series(vc, "psnr"),
             f"video {Path(video).name}, {v['frames']} frames", "PSNR (dB)")
        vt = {"ours_task": v["ours"]["task"], **{a: s["points"] for a, s in v["anchors"].items()}}
        draw("rd_video_region_psnr.png", _series(vt, "region_psnr"),
             f"video {Path(video).name}, {v['frames']} frames", "region PSNR (dB)")
    return plots


def _video_summary(result: dict[str, Any]) -> None:
    """The returned summary keeps the video's BD-rates on top and leaves the per-frame detail
    to the file."""
    result["video"] = {k: v for k, v in result["video"].items() if k != "per_frame"}
    for a in VIDEO_ANCHORS:
        result[f"video_bd_rate_vs_{a}_psnr"] = result["video"][f"bd_rate_vs_{a}_psnr"]
        result[f"video_bd_rate_vs_{a}_psnr_note"] = result["video"][f"bd_rate_vs_{a}_psnr_note"]


def run_bench_codec(images: Path | None = None, boxes: Path | None = None,
                    video: str | None = None, max_frames: int | None = None,
                    checkpoint: Path | None = None, out: Path = Path("out/bench-codec"),
                    quiet: bool = False, *, model: Any = None, grounder: str = "nanodet",
                    qualities: Sequence[int] | None = None,
                    jpeg_qualities: Sequence[int] = (3, 5, 10, 20, 35, 50, 70, 85, 95),
                    webp_qualities: Sequence[int] = (1, 5, 10, 20, 35, 50, 70, 85, 95),
                    x265_crfs: Sequence[int] = (22, 27, 32, 37, 42, 47, 51),
                    av1_crfs: Sequence[int] = (20, 30, 40, 50, 56, 63),
                    video_x264_crfs: Sequence[int] = (18, 23, 28, 33, 38, 43, 48, 51),
                    video_x265_crfs: Sequence[int] = (18, 23, 28, 33, 38, 43, 48, 51),
                    ) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the summary, writes the rest."""
    t_start = time.monotonic()
    paths, pictures, box_map, clip = _read_inputs(images, boxes, video, max_frames, grounder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiscoverError(f"cannot create --out {str(out)!r} ({e.strerror}); pick a writable "
                            "folder") from None
    prog = Progress("bench codec", enabled=not quiet)
    ours = Ours(checkpoint, model)
    qs = _qualities(ours, qualities)
    ours.warm_up()
    box_source = BoxSource(ours.align, box_map, grounder)
    anchor_values = {k: v for k, v in {"jpeg": jpeg_qualities, "webp": webp_qualities,
                                       "x265": x265_crfs, "av1": av1_crfs}.items() if v}
    try:
        per_image = _run_images(paths, pictures, box_source, ours, qs, anchor_values, prog)
        result: dict[str, Any] = {
            "images": len(per_image),
            "image_source": str(images) if images else "held-out OpenCV photos "
                                                      "(sdk.codecs.learned.training)",
            "boxes": box_source.described, "checkpoint": ours.source,
            "checkpoint_hash": ours.hash, "rate_points": ours.points, "qualities": qs,
            "default_quality": ours.default_quality,
            "bd_method": "cubic fit of log10(bpp) over quality (VCEG-M33), overlapping range "
                         "only; per-image BD-rates averaged; MS-SSIM in dB",
            "metrics": "PSNR over RGB samples; MS-SSIM 5 scales (fewer under 176 px), per RGB "
                       "channel, averaged; region figures inside the task boxes",
            **_image_summary(per_image, ours, list(anchor_values))}
        if box_map is not None:
            result["images_without_boxes"] = [im["name"] for im in per_image
                                              if im["name"] not in box_map]
        if video is not None and clip is not None:
            result["video"] = _bench_video(video, clip[0], clip[1], ours, qs,
                                           {"x264": video_x264_crfs, "x265": video_x265_crfs},
                                           box_source, prog)
    finally:
        prog.done()
    result["plots"] = _plots(result, len(per_image), video, out)
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    full = {**result, "per_image": per_image}
    (out / "codec.json").write_text(json.dumps(full, indent=2))
    result["json"] = str(out / "codec.json")
    if video is not None:  # the per-frame detail stays in the file
        _video_summary(result)
    return result
