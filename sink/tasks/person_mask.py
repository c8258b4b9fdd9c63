"""``person-mask``: person instance masks (the offline default segmentation model).

Model: MediaPipe selfie segmentation (:mod:`sdk.models.person_mask`, bundled ONNX file, ONNX
Runtime), a *semantic* person mask. Instances come from person boxes:

- ``boxes: regions`` (default): the frame's region table, this task's regions whose label
  is a person word (``person_labels``; default every profile label the bundled COCO-80 label
  map sends to "person", e.g. pedestrian, cyclist). Costs no extra model: the edge already
  grounded them.
- ``boxes: nanodet``: NanoDet's person boxes on the composed frame (for edges whose task
  regions are not labelled per object, or to segment what the sink actually sees).

``mode: crops`` (default) runs the model once per box on a square window around it (the box's
longer side x ``1 + context``), because the model was made for selfies: on a whole street frame
its people are a few pixels tall and it misses them (frame 0 of the sample clip: mean
probability 0.21 inside the person boxes with the whole frame, 0.47 with crops, and no false
mask on the building). ``mode: frame`` runs it once on the whole frame (close-up cameras) and
splits that mask by the boxes.

Each instance is the pixels of its box (grown by ``box_margin``) whose probability is at least
``threshold``; a pixel two boxes claim goes to the higher-scoring box. ``score`` is the box's
score times the mean probability over the instance's pixels; ``bbox`` is the mask's own COCO
box; ``segmentation`` is compressed COCO RLE (:mod:`sdk.masks`) of the whole frame::

    {"model": "person-mask", "masks": [{"label": "person", "category_id": 1, "score": 0.66,
      "bbox": [x, y, w, h], "segmentation": {"size": [h, w], "counts": "..."}, "id": 3}]}

(``id``: the region id, with ``boxes: regions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from discover.sdk import masks
from discover.sink.tasks.base import TASK_MODELS, TaskModel, TaskModelConfig
from discover.sink.tasks.coco import PERSON_CATEGORY_ID
from pydantic import Field


def default_person_labels() -> set[str]:
    """"person" and every synonym the bundled COCO-80 label map sends to it."""
    from discover.sdk.grounders.nanodet import LABEL_MAP, load_label_map
    from discover.sdk.models.nanodet import COCO80_LABELS

    person = COCO80_LABELS.index("person")
    return {k for k, v in load_label_map(LABEL_MAP, COCO80_LABELS).items() if v == person}


class PersonMaskConfig(TaskModelConfig):
    type: Literal["person-mask"] = "person-mask"
    weights: Path | None = Field(None, description="ONNX file (default: the bundled one)")
    boxes: Literal["regions", "nanodet"] = Field(
        "regions", description="person boxes: the edge's region table or NanoDet at the sink")
    mode: Literal["crops", "frame"] = Field(
        "crops", description="crops: the model on a window per box; frame: once per frame")
    person_labels: list[str] | None = Field(
        None, description="region labels that are persons (default: the label map's synonyms)")
    threshold: float = Field(0.5, gt=0, lt=1, description="mask probability cut")
    context: float = Field(0.3, ge=0, le=3, description="crops: window side beyond the box")
    box_margin: float = Field(0.05, ge=0, le=1, description="instance may exceed its box by "
                                                            "this fraction of its size")
    min_area: int = Field(16, ge=1, description="drop instances with fewer pixels")
    max_instances: int = Field(50, ge=1, description="highest-scoring boxes first")
    nanodet_score_threshold: float = Field(0.35, ge=0, le=1)
    threads: int = Field(2, ge=1, description="ONNX Runtime intra-op threads")


@TASK_MODELS.register
class PersonMaskTask(TaskModel):
    key = "person-mask"
    Config = PersonMaskConfig
    config: PersonMaskConfig

    def __init__(self, config: PersonMaskConfig) -> None:
        super().__init__(config)
        from discover.sdk.models.person_mask import PersonMask

        self.model = PersonMask(config.weights, intra_op_num_threads=config.threads)
        self.detector = None
        if config.boxes == "nanodet":
            from discover.sdk.models.nanodet import NanoDet

            self.detector = NanoDet(intra_op_num_threads=config.threads)
        labels = (config.person_labels if config.person_labels is not None
                  else default_person_labels())
        self.person_labels = {" ".join(str(s).lower().split()) for s in labels}

    def person_boxes(self, image: np.ndarray,
                     info: dict[str, Any]) -> list[tuple[tuple[float, ...], float, int | None]]:
        """(x0, y0, x1, y1), score, region id or None -- best first."""
        if self.detector is not None:
            d = self.detector.detect(image, score_threshold=self.config.nanodet_score_threshold)
            out = [(tuple(map(float, b)), float(s), None)
                   for b, s, lab in zip(d.boxes, d.scores, d.labels, strict=True)
                   if lab == "person"]
        else:
            task = info.get("task")
            out = [(tuple(map(float, r.box)), float(r.score), r.rid)
                   for r in info.get("regions", ())
                   if task in r.tasks and r.area > 0
                   and " ".join(r.label.lower().split()) in self.person_labels]
        out.sort(key=lambda t: -t[1])
        return out[: self.config.max_instances]

    def run(self, image: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        height, width = image.shape[:2]
        boxes = self.person_boxes(image, info)
        full = self.model.probabilities(image) if (c.mode == "frame" and boxes) else None
        taken = np.zeros((height, width), bool)
        results = []
        for box, score, rid in boxes:
            x0, y0, x1, y1 = box
            mx, my = (x1 - x0) * c.box_margin, (y1 - y0) * c.box_margin
            bx0, by0 = max(0, int(np.floor(x0 - mx))), max(0, int(np.floor(y0 - my)))
            bx1, by1 = min(width, int(np.ceil(x1 + mx))), min(height, int(np.ceil(y1 + my)))
            if bx1 <= bx0 or by1 <= by0:
                continue
            if full is not None:
                prob = full[by0:by1, bx0:bx1]
            else:
                win_prob, (wx0, wy0, wx1, wy1) = self.model.probabilities_in_box(
                    image, box, c.context)
                prob = np.zeros((by1 - by0, bx1 - bx0), np.float32)
                ix0, iy0 = max(bx0, wx0), max(by0, wy0)
                ix1, iy1 = min(bx1, wx1), min(by1, wy1)
                if ix1 > ix0 and iy1 > iy0:
                    prob[iy0 - by0:iy1 - by0, ix0 - bx0:ix1 - bx0] = \
                        win_prob[iy0 - wy0:iy1 - wy0, ix0 - wx0:ix1 - wx0]
            inst = (prob >= c.threshold) & ~taken[by0:by1, bx0:bx1]
            n = int(inst.sum())
            if n < c.min_area:
                continue
            taken[by0:by1, bx0:bx1] |= inst
            mask = np.zeros((height, width), bool)
            mask[by0:by1, bx0:bx1] = inst
            entry: dict[str, Any] = {
                "label": "person", "category_id": PERSON_CATEGORY_ID,
                "score": round(score * float(prob[inst].mean()), 4),
                "bbox": masks.bbox(mask), "area": n, "segmentation": masks.encode(mask)}
            if rid is not None:
                entry["id"] = rid
            results.append(entry)
        return {"model": self.key, "masks": results}
