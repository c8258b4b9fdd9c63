"""Open Images SSD MobileNetV2 (23 object classes) on ONNX Runtime.

The second offline detector: ``weights/ssd_oid_mobilenetv2.onnx``, converted by
``tools/convert_ssd_oid.py`` from the fp16 TFLite model inside the npm package
``@mediapipe/objectron`` (Apache-2.0; licence in ``weights/NOTICE.md``), so the edge needs
neither npm nor TensorFlow. Weights are stored as float16 (as in the TFLite file) and cast to
float32 when the session loads; outputs match the TFLite interpreter to 5e-5.

Graph facts (checked on the converted file): input ``normalized_input_image_tensor``
(1, 300, 300, 3) float32, **NHWC, RGB in [-1, 1]**; outputs ``raw_outputs/box_encodings``
(1, 1917, 4) and ``raw_outputs/class_predictions`` (1, 1917, 24) logits, class 0 the
background ("???" in the package's label map).

Pre- and post-processing follow the package's own MediaPipe graph
(``ObjectDetectionOidV4Subgraph``, whose options are serialised in the package's wasm and were
decoded for this module): ``ImageToTensorCalculator`` 300x300 without keeping the aspect ratio,
range [-1, 1]; ``SsdAnchorsCalculator`` with num_layers 6, min_scale 0.2, max_scale 0.95,
strides 16/32/64/128/256/512, aspect ratios 1, 2, 0.5, 3, 0.3333, anchor offset 0.5,
reduce_boxes_in_lowest_layer (1083 + 834 = 1917 anchors); ``TensorsToDetectionsCalculator``
with box encodings (y_center, x_center, h, w), x/y scale 10, w/h scale 5, exponential box size,
sigmoid scores, class 0 ignored, min score 0.5; ``NonMaxSuppressionCalculator`` IoU 0.5, at most
100 detections. Unlike MediaPipe (one class per anchor, class-agnostic NMS) :meth:`SsdOid.detect`
keeps every (anchor, class) pair above the threshold and suppresses within a class and its
Open Images parent (a Car box and a Vehicle box on the same car are one object), as the NanoDet
wrapper does, so a person on a bicycle keeps both boxes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from discover.sdk.boxes import nms
from discover.sdk.errors import DiscoverError
from discover.sdk.models import Detections as _Detections
from discover.sdk.models import ModelWeightsNotFoundError, open_session  # noqa: F401

#: the package's ``object_detection_oidv4_labelmap.txt``; index = output column, 0 = background
OID_LABELS: tuple[str, ...] = (
    "???", "Bicycle", "Boot", "Laptop", "Person", "Chair", "Cattle", "Desk", "Cat",
    "Computer mouse", "Computer monitor", "Box", "Mug", "Coffee cup", "Stationary bicycle",
    "Table", "Bottle", "High heels", "Vehicle", "Footwear", "Dog", "Book", "Camera", "Car",
)  # fmt: skip
BACKGROUND = 0

#: Open Images hierarchy among these classes: child -> parent. A child box is also an instance
#: of its parent, and NMS treats the two as one class.
OID_PARENTS: dict[str, str] = {
    "Car": "Vehicle", "Boot": "Footwear", "High heels": "Footwear", "Desk": "Table",
}

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "ssd_oid_mobilenetv2.onnx"
CONVERT_COMMAND = "python tools/convert_ssd_oid.py"
INPUT_SIZE = 300
NUM_ANCHORS = 1917

# SsdAnchorsCalculatorOptions of the package's graph.
_ANCHOR_STRIDES = (16, 32, 64, 128, 256, 512)
_ANCHOR_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)
_MIN_SCALE, _MAX_SCALE = 0.2, 0.95
# TensorsToDetectionsCalculatorOptions of the package's graph.
_XY_SCALE, _WH_SCALE = 10.0, 5.0
_PRE_NMS_TOP_K = 2000


class OidDetections(_Detections):
    """:class:`sdk.models.Detections` with class ids into :data:`OID_LABELS`."""

    CLASS_NAMES = OID_LABELS


def ssd_anchors() -> np.ndarray:
    """(1917, 4) anchors x_center, y_center, w, h (normalised), in the order of the graph's
    outputs: MediaPipe's ``SsdAnchorsCalculator`` with this model's options."""
    n = len(_ANCHOR_STRIDES)

    def scale(i: int) -> float:
        return _MIN_SCALE + (_MAX_SCALE - _MIN_SCALE) * i / (n - 1)

    out = []
    for layer, stride in enumerate(_ANCHOR_STRIDES):
        if layer == 0:  # reduce_boxes_in_lowest_layer: three fixed anchors
            ratios, scales = [1.0, 2.0, 0.5], [0.1, scale(0), scale(0)]
        else:
            ratios = [*_ANCHOR_ASPECT_RATIOS, 1.0]  # + interpolated_scale_aspect_ratio 1.0
            nxt = 1.0 if layer == n - 1 else scale(layer + 1)
            scales = [scale(layer)] * len(_ANCHOR_ASPECT_RATIOS) + [math.sqrt(scale(layer) * nxt)]
        sizes = [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in zip(scales, ratios, strict=True)]
        side = math.ceil(INPUT_SIZE / stride)
        for y in range(side):
            for x in range(side):
                out.extend(((x + 0.5) / side, (y + 0.5) / side, w, h) for w, h in sizes)
    return np.asarray(out, dtype=np.float32)


def decode_boxes(encodings: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(N, 4) box encodings (y_center, x_center, h, w) -> normalised x0, y0, x1, y1."""
    yc = encodings[:, 0] / _XY_SCALE * anchors[:, 3] + anchors[:, 1]
    xc = encodings[:, 1] / _XY_SCALE * anchors[:, 2] + anchors[:, 0]
    h = np.exp(encodings[:, 2] / _WH_SCALE) * anchors[:, 3]
    w = np.exp(encodings[:, 3] / _WH_SCALE) * anchors[:, 2]
    return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)


def _nms_group(class_id: int) -> int:
    parent = OID_PARENTS.get(OID_LABELS[class_id])
    return OID_LABELS.index(parent) if parent else class_id


class SsdOid:
    """Open Images detector: ``SsdOid().detect(frame_bgr)`` -> :class:`OidDetections`."""

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
            path, what="SSD Open Images",
            origin="the npm package @mediapipe/objectron",
            convert_command=CONVERT_COMMAND, threads=intra_op_num_threads, providers=providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shapes = {o.name: tuple(o.shape[1:]) for o in outputs}
        boxes = [n for n, s in shapes.items() if s == (NUM_ANCHORS, 4)]
        scores = [n for n, s in shapes.items() if s == (NUM_ANCHORS, len(OID_LABELS))]
        if (len(inputs) != 1 or tuple(inputs[0].shape[1:]) != (INPUT_SIZE, INPUT_SIZE, 3)
                or len(boxes) != 1 or len(scores) != 1):
            raise DiscoverError(
                f"{path} is not the SSD Open Images graph (inputs "
                f"{[(i.name, i.shape) for i in inputs]}, outputs "
                f"{[(o.name, o.shape) for o in outputs]}); recreate it with `{CONVERT_COMMAND}`."
            )
        self._input_name = inputs[0].name
        self._outputs = [boxes[0], scores[0]]
        self.anchors = ssd_anchors()
        self._groups = np.array([_nms_group(i) for i in range(len(OID_LABELS))], np.int64)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @staticmethod
    def preprocess(image_bgr: np.ndarray) -> np.ndarray:
        """Plain resize to 300x300 (no letterbox), RGB, [-1, 1], NHWC."""
        if image_bgr.ndim == 2:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or min(image_bgr.shape[:2]) < 1:
            raise ValueError(f"expected an HxWx3 BGR image, got shape {image_bgr.shape}")
        resized = cv2.resize(image_bgr, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray((rgb.astype(np.float32) / 127.5 - 1.0)[None])

    def raw(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1917, 4) box encodings and (1917, 24) class logits for one frame."""
        enc, logits = self.session.run(self._outputs, {self._input_name: self.preprocess(image_bgr)})
        return enc[0], logits[0]

    def detect(
        self,
        image_bgr: np.ndarray,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        classes: Iterable[int] | None = None,
    ) -> OidDetections:
        """Detect objects in one BGR frame; boxes in that frame's pixels. ``classes`` limits
        the output to these class indices (default: every class but the background)."""
        height, width = image_bgr.shape[:2]
        enc, logits = self.raw(image_bgr)  # validates the shape first
        wanted = (np.arange(1, len(OID_LABELS)) if classes is None
                  else np.array(sorted({int(c) for c in classes} - {BACKGROUND}), np.int64))
        if wanted.size == 0:
            return OidDetections()
        if wanted.min() < 1 or wanted.max() >= len(OID_LABELS):
            raise ValueError(f"class indices must be in 1..{len(OID_LABELS) - 1}")
        scores = 1.0 / (1.0 + np.exp(-logits[:, wanted]))
        anchor_idx, k = np.nonzero(scores > score_threshold)
        if anchor_idx.size == 0:
            return OidDetections()
        sc = scores[anchor_idx, k].astype(np.float32)
        cls = wanted[k]
        order = np.argsort(-sc, kind="stable")[:_PRE_NMS_TOP_K]
        anchor_idx, sc, cls = anchor_idx[order], sc[order], cls[order]
        boxes = decode_boxes(enc[anchor_idx], self.anchors[anchor_idx])
        boxes = (boxes * np.array([width, height, width, height], np.float32)).astype(np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, sc, cls = boxes[ok], sc[ok], cls[ok]
        keep = nms(boxes, sc, iou_threshold, groups=self._groups[cls])[:max_detections]
        return OidDetections(boxes=boxes[keep], scores=sc[keep], class_ids=cls[keep])
