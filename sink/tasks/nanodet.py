"""``nanodet``: COCO-80 detection on the composed frame (the offline default detector).

Runs :class:`sdk.models.nanodet.NanoDet` (the bundled ONNX file, ONNX Runtime) on the frame
the composer produced, so the results show what the machine task sees after coding, not the
edge's boxes (that is the ``regions`` task model). Results are COCO detections::

    {"model": "nanodet", "detections": [{"label": "person", "score": 0.71,
      "bbox": [x, y, w, h], "category_id": 1}, ...]}

with ``category_id`` in COCO's 91-id numbering (mapping in :mod:`sink.tasks.coco`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from discover.sink.tasks.base import TASK_MODELS, TaskModel, TaskModelConfig
from discover.sink.tasks.coco import COCO80_TO_COCO91, detection, label_filter
from pydantic import Field


class NanoDetTaskConfig(TaskModelConfig):
    type: Literal["nanodet"] = "nanodet"
    weights: Path | None = Field(None, description="ONNX file (default: the bundled one)")
    score_threshold: float = Field(0.35, ge=0, le=1)
    iou_threshold: float = Field(0.6, gt=0, le=1)
    max_detections: int = Field(100, ge=1)
    classes: list[str] | None = Field(None, description="COCO-80 class names to report "
                                                        "(default: all)")
    threads: int = Field(2, ge=1, description="ONNX Runtime intra-op threads")


@TASK_MODELS.register
class NanoDetTask(TaskModel):
    key = "nanodet"
    Config = NanoDetTaskConfig
    config: NanoDetTaskConfig

    def __init__(self, config: NanoDetTaskConfig) -> None:
        super().__init__(config)
        from discover.sdk.models.nanodet import COCO80_LABELS, NanoDet

        self.labels = COCO80_LABELS
        self.keep = label_filter(config.classes, COCO80_LABELS, self.key)
        self.model = NanoDet(config.weights, intra_op_num_threads=config.threads)

    def run(self, image: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        # With a class filter, cap after filtering so other classes never crowd out the wanted.
        cap = c.max_detections if self.keep is None else 1000
        d = self.model.detect(image, score_threshold=c.score_threshold,
                              iou_threshold=c.iou_threshold, max_detections=cap)
        dets = []
        for box, score, cls in zip(d.boxes, d.scores, d.class_ids, strict=True):
            label = self.labels[int(cls)]
            if self.keep is None or label in self.keep:
                dets.append(detection(label, score, box, COCO80_TO_COCO91[int(cls)]))
        return {"model": self.key, "detections": dets[: c.max_detections]}
