"""What the ImageNet classifiers share: which pixels they classify and the result entries.

``per_region`` (default true) classifies every region of the task in the frame's region table,
one crop each; ``false`` classifies the whole frame. Why regions by default: the sink only
receives the task's regions, so outside them the composed frame is empty (or stale), and a
camera view holds many objects, which one label for the whole frame would describe none of.
The paper's ImageNet evaluation classifies whole images (one object per image): set
``per_region: false`` to reproduce it.

- region crop: a square window on the region's centre, its side the region's longer side times
  ``1 + context`` (mid-grey outside the frame), resized to the model's input size -- the whole
  object, aspect kept (a centre crop would cut the head and feet off a person).
- whole frame: the model's evaluation transform (shorter side resized, then centre crop).

Results: ``{"model", "regions": [{"id", "region_label", "bbox", "top"}]}`` per region, or
``{"model", "top": [...]}`` for the whole frame, ``top`` being ``[{"label", "index", "score"}]``
best first, ``score`` the softmax probability.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import cv2
import numpy as np
from discover.sink.tasks.base import TaskModel, TaskModelConfig
from discover.sink.tasks.torch_common import DEVICE_FIELD, Device
from pydantic import Field


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in synset order (torchvision's metadata, no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def top_k(probs: np.ndarray, k: int, names: list[str]) -> list[dict[str, Any]]:
    """The k most probable classes of one probability vector, best first."""
    idx = np.argsort(-probs, kind="stable")[:k]
    return [{"label": names[i], "index": int(i), "score": round(float(probs[i]), 4)} for i in idx]


def square_crop(image: np.ndarray, box: tuple[float, float, float, float], context: float,
                size: int, fill: int = 128) -> np.ndarray:
    """A ``size`` x ``size`` view of a square window centred on ``box``, its side the box's
    longer side times ``1 + context``; parts outside the frame are ``fill``."""
    x0, y0, x1, y1 = box
    side = max(2.0, max(x1 - x0, y1 - y0) * (1.0 + context))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    scale = size / side
    # One affine warp crops, pads and resizes together.
    m = np.array([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]],
                 np.float32)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, m, (size, size), flags=interp,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(fill, fill, fill))


def center_crop(image: np.ndarray, resize: int, size: int) -> np.ndarray:
    """Shorter side to ``resize``, then the central ``size`` x ``size``."""
    h, w = image.shape[:2]
    s = resize / min(h, w)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y0, x0 = (nh - size) // 2, (nw - size) // 2
    return im[y0:y0 + size, x0:x0 + size]


class ClassifierConfig(TaskModelConfig):
    """Options of every ImageNet classifier."""

    per_region: bool = Field(True, description="classify each task region (true) or the "
                                               "whole frame (false)")
    context: float = Field(0.15, ge=0, le=2, description="region crops: extra side, fraction")
    top_k: int = Field(5, ge=1, le=1000)
    max_regions: int = Field(64, ge=1, description="largest regions first, per frame")
    device: Device = DEVICE_FIELD


class ClassifierTask(TaskModel):
    """Crops per the config, then :meth:`probabilities` on them; subclasses load the model and
    set ``names``, ``size`` (input side), ``resize`` (whole frame: shorter side before the
    centre crop), ``mean`` and ``std`` (RGB, on [0, 1] pixels)."""

    config: ClassifierConfig
    names: list[str]
    size: int
    resize: int
    mean: np.ndarray
    std: np.ndarray

    @abstractmethod
    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(N, classes) logits for a normalised (N, 3, size, size) float32 RGB batch."""

    def probabilities(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, classes) softmax probabilities for N BGR crops of the input size."""
        x = np.stack([cv2.cvtColor(c, cv2.COLOR_BGR2RGB) for c in crops]).astype(np.float32)
        x = np.ascontiguousarray(((x * (1.0 / 255.0) - self.mean) / self.std).transpose(0, 3, 1, 2))
        # On a CPU one crop at a time is faster than a batch (measured: 9 EfficientNet-Lite0
        # crops 290-375 ms singly, 520-550 ms batched, 1 thread); GPUs want batches.
        device = getattr(self, "device", None)
        step = 16 if device is not None and device.type == "cuda" else 1
        z = np.concatenate([self.logits(x[i:i + step]) for i in range(0, len(x), step)])
        z = z.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def run(self, image: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        if not c.per_region:
            probs = self.probabilities([center_crop(image, self.resize, self.size)])[0]
            return {"model": self.key, "top": top_k(probs, c.top_k, self.names)}
        task = info.get("task")
        regions = [r for r in info.get("regions", ()) if task in r.tasks and r.area > 0]
        regions = sorted(regions, key=lambda r: -r.area)[: c.max_regions]
        out = []
        if regions:
            crops = [square_crop(image, tuple(map(float, r.box)), c.context, self.size)
                     for r in regions]
            for r, p in zip(regions, self.probabilities(crops), strict=True):
                x0, y0, x1, y1 = r.box
                out.append({"id": r.rid, "region_label": r.label,
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "top": top_k(p, c.top_k, self.names)})
        return {"model": self.key, "regions": out}
