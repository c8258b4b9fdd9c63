"""Task results -> shapes to draw over the composed view: boxes with label and score, mask
outlines. The web page draws them as SVG; the restream burns them into its pictures."""

from __future__ import annotations

import zlib
from typing import Any

import cv2
import numpy as np
from discover.sdk import masks

#: outline points per mask, at most (the page redraws every frame)
MAX_POLYGON_POINTS = 64


def _box(bbox: list[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [round(x, 1), round(y, 1), round(x + w, 1), round(y + h, 1)]


def mask_outline(rle: dict[str, Any]) -> list[list[int]]:
    """The largest outer contour of a COCO RLE mask, simplified to a few dozen points."""
    m = masks.decode(rle).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    c = max(contours, key=cv2.contourArea)
    eps = 1.0
    while len(c) > MAX_POLYGON_POINTS:
        c = cv2.approxPolyDP(c, eps, True)
        eps *= 2
    return c.reshape(-1, 2).astype(int).tolist()


def shapes(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every drawable item of every task's result: ``{"task", "label", "score", "box"
    [x0, y0, x1, y1], "polygon"?}``. Detections, masks and per-region classes have boxes;
    a whole-frame classification becomes a box-less item (shown as a caption)."""
    out: list[dict[str, Any]] = []
    for task, res in results.items():
        for d in res.get("detections", ()):
            out.append({"task": task, "label": str(d["label"]), "score": d.get("score"),
                        "box": _box(d["bbox"])})
        for d in res.get("masks", ()):
            item = {"task": task, "label": str(d["label"]), "score": d.get("score"),
                    "box": _box(d["bbox"])}
            if isinstance(d.get("segmentation"), dict):
                item["polygon"] = mask_outline(d["segmentation"])
            out.append(item)
        for d in res.get("regions", ()):
            if d.get("top"):
                best = d["top"][0]
                out.append({"task": task, "label": str(best["label"]), "score": best["score"],
                            "box": _box(d["bbox"])})
        if res.get("top"):
            best = res["top"][0]
            out.append({"task": task, "label": str(best["label"]), "score": best["score"]})
    return out


def colour(label: str) -> tuple[int, int, int]:
    """A stable, saturated BGR colour per label."""
    hue = zlib.crc32(label.encode()) % 180
    b, g, r = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw(image: np.ndarray, items: list[dict[str, Any]]) -> np.ndarray:
    """A copy of ``image`` with the shapes drawn (for the restream)."""
    out = image.copy()
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    captions = []
    for it in items:
        col = colour(it["label"])
        text = it["label"] if it.get("score") is None else f"{it['label']} {it['score']:.2f}"
        if it.get("polygon"):
            cv2.polylines(out, [np.int32(it["polygon"])], True, col, 2)
        if "box" not in it:
            captions.append(text)
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in it["box"])
        cv2.rectangle(out, (x0, y0), (x1, y1), col, 2)
        (tw, th), base = cv2.getTextSize(text, font, scale, 1)
        ty = max(th + 2, y0 - 3)
        cv2.rectangle(out, (x0, ty - th - 2), (x0 + tw + 2, ty + base - 1), col, -1)
        cv2.putText(out, text, (x0 + 1, ty - 1), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    for k, text in enumerate(captions):
        cv2.putText(out, text, (6, 18 + 18 * k), font, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return out
