"""``discover ground``: the boxes a task profile and grounder find in an image or a video, as JSON,
plus an annotated picture, so a profile can be checked before deploying it.

Output (``--json``, one line)::

    image: {"image", "width", "height", "tasks", "grounder", "labels", "count", "ground_ms",
            "boxes": [{"label", "score", "box": [x0, y0, x1, y1]} ...], "annotated"}
    video: {"source", "width", "height", "tasks", "grounder", "labels", "frame_count",
            "grounded_frames", "ground_ms", "frames": [{"index", "grounded", "boxes": [...]} ...],
            "annotated", "annotated_frame"}

Boxes are in pixels of the input, best score first, clipped to the frame, with boxes under the
grounder's ``min_score`` left out as the edge does; a box that also answers for other labels
of the profile lists them in ``aliases``. A video honours ``edge.tracking`` (``--set
edge.tracking.every=5``), so tracked boxes can be checked too; each frame says whether the real
grounder ran on it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from discover.sdk.errors import DiscoverError
from discover.sdk.regions import Detection


def read_image(path: Path) -> np.ndarray:
    """A BGR image, or one DiscoverError line saying why not."""
    if not path.exists():
        raise DiscoverError(f"cannot read image {str(path)!r}: file not found; pass a PNG, JPEG, "
                            "BMP, WebP or TIFF file")
    if not path.is_file():
        raise DiscoverError(f"cannot read image {str(path)!r}: not a regular file; pass an "
                            "image file (for a folder of images use --source)")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DiscoverError(f"cannot read image {str(path)!r}: not an image OpenCV can decode; "
                            "pass a PNG, JPEG, BMP, WebP or TIFF file")
    return img


def box_json(d: Detection, width: int, height: int) -> dict[str, Any]:
    x0, y0, x1, y1 = d.box
    box = [round(min(max(x0, 0.0), width), 1), round(min(max(y0, 0.0), height), 1),
           round(min(max(x1, 0.0), width), 1), round(min(max(y1, 0.0), height), 1)]
    out: dict[str, Any] = {"label": d.label, "score": round(float(d.score), 4), "box": box}
    if d.aliases:
        out["aliases"] = list(d.aliases)
    return out


def kept(dets: Sequence[Detection], min_score: float) -> list[Detection]:
    """Best first, without the boxes the edge would not send for their score."""
    return sorted((d for d in dets if d.score >= min_score), key=lambda d: -d.score)


def label_colour(label: str) -> tuple[int, int, int]:
    """A stable, saturated BGR colour per label."""
    hue = zlib.crc32(label.encode()) % 180
    hsv = np.uint8([[[hue, 220, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_detections(image: np.ndarray, dets: Sequence[Detection]) -> np.ndarray:
    """A copy of the image with each box, its label and score drawn."""
    out = image.copy()
    h, w = out.shape[:2]
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    for d in sorted(dets, key=lambda d: d.score):  # best drawn last, on top
        x0, y0, x1, y1 = (int(round(v)) for v in d.box)
        x0, y0 = max(0, min(x0, w - 1)), max(0, min(y0, h - 1))
        x1, y1 = max(0, min(x1, w - 1)), max(0, min(y1, h - 1))
        col = label_colour(d.label)
        cv2.rectangle(out, (x0, y0), (x1, y1), col, 2)
        text = f"{d.label} {d.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        ty = y0 - 3 if y0 - th - base - 3 >= 0 else min(h - 1, y1 + th + 3)
        tx = max(0, min(x0, w - tw - 3))  # keep the label inside the picture
        cv2.rectangle(out, (tx, ty - th - 2), (tx + tw + 2, ty + base - 1), col, -1)
        cv2.putText(out, text, (tx + 1, ty - 1), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return out


def check_image_path(path: Path | None) -> None:
    """Refuse an --annotate name OpenCV cannot write, before any work is done."""
    if path is not None and not cv2.haveImageWriter(str(path)):
        raise DiscoverError(f"cannot write {str(path)!r}: unknown image type; give --annotate a "
                            ".png or .jpg file name")


def write_image(path: Path, image: np.ndarray) -> None:
    """Write a PNG/JPEG/...; one DiscoverError line if the path or format is bad."""
    check_image_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ok = cv2.imwrite(str(path), image)
    except (OSError, cv2.error) as e:
        raise DiscoverError(f"cannot write {str(path)!r} ({e.__class__.__name__}); check the "
                            "folder exists and is writable") from None
    if not ok:
        raise DiscoverError(f"cannot write {str(path)!r}; check the folder is writable")


def task_labels(tasks: Sequence[str]) -> list[str]:
    """The union of the tasks' profile labels, in profile order (as the edge asks for them)."""
    from discover.sdk.profiles import load_profile

    profiles = [load_profile(t) for t in tasks]
    return list(dict.fromkeys(lb for p in profiles for lb in p.labels))


def label_coverage(tasks: Sequence[str], grounder_cfg: Any) -> dict[str, Any]:
    """Which of the tasks' profile labels the grounder can find: for a fixed-vocabulary
    detector, the detector class each label maps to and the labels none does."""
    from discover.sdk.grounders import GROUNDERS

    labels = task_labels(tasks)
    grounder = GROUNDERS.create(grounder_cfg)
    out: dict[str, Any] = {"tasks": list(tasks), "grounder": grounder.key, "labels": len(labels)}
    plan = getattr(grounder, "plan", None)
    if plan is None:
        return {**out, "grounded": len(labels), "unmapped": [],
                "note": "class-agnostic or open-vocabulary grounder: every label goes to it"}
    by_class = {grounder.classes[c]: list(names) for c, names in sorted(plan(labels).items())}
    return {**out, "grounded": len(labels) - len(plan.unmapped), "unmapped": list(plan.unmapped),
            "classes": by_class}


def ground_image(path: Path, tasks: Sequence[str], grounder_cfg: Any,
                 annotate: Path | None = None) -> dict[str, Any]:
    """Ground one image with the tasks' labels; optionally write it annotated."""
    from discover.sdk.grounders import GROUNDERS

    check_image_path(annotate)
    img = read_image(path)
    labels = task_labels(tasks)
    grounder = GROUNDERS.create(grounder_cfg)
    h, w = img.shape[:2]
    t0 = time.perf_counter()
    dets = kept(grounder.ground(img, labels), grounder.config.min_score)
    ms = 1000 * (time.perf_counter() - t0)
    out: dict[str, Any] = {"image": str(path), "width": w, "height": h, "tasks": list(tasks),
                           "grounder": grounder.key, "labels": len(labels), "count": len(dets),
                           "ground_ms": round(ms, 1),
                           "boxes": [box_json(d, w, h) for d in dets]}
    if grounder.class_agnostic and grounder.key == "motion":
        out["note"] = ("the motion grounder finds what moves, so it needs a video (--source); "
                       "on one image it finds nothing")
    if annotate is not None:
        write_image(annotate, draw_detections(img, dets))
        out["annotated"] = str(annotate)
    return out


def ground_video(source: str, tasks: Sequence[str], grounder_cfg: Any, tracking: Any = None,
                 max_frames: int | None = None, annotate: Path | None = None,
                 annotate_frame: int | None = None,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Ground a video's frames (tracked between groundings if ``tracking`` says so); optionally
    write one frame annotated (``annotate_frame``, default the last)."""
    from discover.edge.sources import open_source, paced
    from discover.sdk.grounders import GROUNDERS
    from discover.sdk.tracking import TrackingGrounder

    if max_frames is not None and max_frames < 1:
        raise DiscoverError(f"--max-frames must be at least 1 (got {max_frames})")
    check_image_path(annotate)
    if annotate_frame is not None and annotate_frame < 0:
        raise DiscoverError(f"--annotate-frame must be 0 or more (got {annotate_frame})")
    if annotate_frame is not None and max_frames is not None and annotate_frame >= max_frames:
        raise DiscoverError(f"--annotate-frame {annotate_frame} is past --max-frames "
                            f"{max_frames}; pick a frame below it")
    labels = task_labels(tasks)
    grounder = GROUNDERS.create(grounder_cfg)
    tg = TrackingGrounder(grounder, tracking)
    src = open_source(source)
    frames: list[dict[str, Any]] = []
    shown: tuple[int, np.ndarray, list[Detection]] | None = None
    t_ground = 0.0
    try:
        w, h = src.width, src.height
        for fr in paced(src, realtime=False, max_frames=max_frames):
            t0 = time.perf_counter()
            dets = kept(tg.ground(fr.image, labels), grounder.config.min_score)
            t_ground += time.perf_counter() - t0
            frames.append({"index": fr.index, "grounded": tg.last_grounded,
                           "boxes": [box_json(d, w, h) for d in dets]})
            if annotate is not None and (annotate_frame is None or fr.index == annotate_frame):
                shown = (fr.index, fr.image, dets)
            if progress is not None:
                progress(fr.index + 1)
    finally:
        src.close()
    n = len(frames)
    out: dict[str, Any] = {"source": source, "width": w, "height": h, "tasks": list(tasks),
                           "grounder": grounder.key, "labels": len(labels), "frame_count": n,
                           "grounded_frames": tg.grounded,
                           "ground_ms": round(1000 * t_ground / max(n, 1), 2), "frames": frames}
    if annotate is not None:
        if shown is None:
            raise DiscoverError(f"--annotate-frame {annotate_frame} is past the last frame read "
                                f"({n - 1}); pick a smaller index or raise --max-frames")
        write_image(annotate, draw_detections(shown[1], shown[2]))
        out["annotated"], out["annotated_frame"] = str(annotate), shown[0]
    return out
