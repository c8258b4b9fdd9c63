"""Reference boxes from a COCO-format annotation file, frame by frame, for ``bench tasks``.

Where ground truth exists, the benchmark scores every setting against it instead of against the
task model's own output on the original frames. Images are matched to frames:

* by ``frame_id`` / ``frame_index`` on the image record (COCO-VID style, 0-based), else
* for an image folder, by file name (``file_name``'s last path part; the folder's images in name
  order are the frames), else
* for a video, by the number in ``file_name`` (``frame_000123.jpg`` -> frame 123).

Boxes are ``[x, y, w, h]`` in pixels; ``iscrowd`` annotations are left out (sdk.metrics has no
ignore regions). Category names are used as labels, so they must be the task model's class
names (COCO-80 for NanoDet); categories it does not have are reported and left out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from discover.sdk.errors import DiscoverError

Box = tuple[float, float, float, float]


def _frame_of(img: dict[str, Any], names: dict[str, int] | None) -> int | None:
    for key in ("frame_id", "frame_index"):
        if isinstance(img.get(key), int):
            return int(img[key])
    name = Path(str(img.get("file_name", ""))).name
    if names is not None:
        return names.get(name)
    m = re.search(r"(\d+)\D*$", name)
    return int(m.group(1)) if m else None


def load_coco_references(path: Path, n_frames: int, labels: Sequence[str],
                         frame_names: Sequence[str] | None = None
                         ) -> tuple[list[list[tuple[Box, str]]], dict[str, Any]]:
    """Per frame ``0 .. n_frames-1`` the reference ``(box x0,y0,x1,y1, label)`` list, and a
    summary: ``frames`` (the annotated frames: only those are scored, since a frame without
    annotations would make every detection on it a false positive), boxes per class, and what
    was left out and why.

    ``labels``: the task model's class names; ``frame_names``: the image folder's file names
    in frame order (None for a video)."""
    try:
        doc = json.loads(Path(path).read_text())
        images, anns = doc["images"], doc["annotations"]
        cats = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
    except FileNotFoundError:
        raise DiscoverError(f"--annotations {path}: no such file") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DiscoverError(f"--annotations {path} is not a COCO annotation file (needs "
                            f"images, annotations, categories): {e}") from None
    names = {n: i for i, n in enumerate(frame_names)} if frame_names is not None else None
    frame_of: dict[int, int] = {}
    for img in images:
        f = _frame_of(img, names)
        if f is not None and 0 <= f < n_frames:
            frame_of[int(img["id"])] = f
    if not frame_of:
        how = "file names of the folder's images" if names is not None else \
            "frame_id / frame_index, or a frame number in file_name"
        raise DiscoverError(f"--annotations {path}: none of its {len(images)} images matches "
                            f"one of the {n_frames} frames benchmarked (matched by {how})")
    known = set(labels)
    refs: list[list[tuple[Box, str]]] = [[] for _ in range(n_frames)]
    counts: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    crowd = 0
    for a in anns:
        f = frame_of.get(int(a.get("image_id", -1)))
        if f is None:
            continue
        if a.get("iscrowd"):
            crowd += 1
            continue
        name = cats.get(int(a.get("category_id", -1)), "?")
        if name not in known:
            unknown[name] += 1
            continue
        x, y, bw, bh = (float(v) for v in a["bbox"])
        if bw <= 0 or bh <= 0:
            continue
        refs[f].append(((x, y, x + bw, y + bh), name))
        counts[name] += 1
    return refs, {"file": str(path), "frames": sorted(set(frame_of.values())),
                  "boxes": dict(sorted(counts.items())),
                  "left_out": {"crowd": crowd, "unknown_categories": dict(sorted(unknown.items()))}}
