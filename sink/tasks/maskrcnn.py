"""``maskrcnn``: COCO instance segmentation with torchvision's Mask R-CNN ResNet-50 FPN.

Weights (not available offline here): ``weights: PATH`` to a state dict, or the torch hub cache
file torchvision itself would download,
``<torch hub dir>/checkpoints/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``; ``weights: random``
for tests. Options as ``fasterrcnn`` plus ``mask_threshold`` (cut on the mask probabilities
torchvision pastes into the frame). Results as ``person-mask``, for every COCO class::

    {"model": "maskrcnn", "masks": [{"label", "category_id", "score", "bbox": [x, y, w, h],
      "area", "segmentation": {"size": [h, w], "counts": "..."}}]}

with ``bbox`` the detector's box and ``segmentation`` compressed COCO RLE of the whole frame.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from discover.sdk import masks
from discover.sink.tasks.base import TASK_MODELS
from discover.sink.tasks.coco import clip_boxes, xywh
from discover.sink.tasks.fasterrcnn import FasterRCNNConfig, TorchvisionDetector
from pydantic import Field


class MaskRCNNConfig(FasterRCNNConfig):
    type: Literal["maskrcnn"] = "maskrcnn"  # type: ignore[assignment]
    mask_threshold: float = Field(0.5, gt=0, lt=1)


@TASK_MODELS.register
class MaskRCNNTask(TorchvisionDetector):
    key = "maskrcnn"
    Config = MaskRCNNConfig
    config: MaskRCNNConfig
    builder_name = "maskrcnn_resnet50_fpn"
    weights_enum = "MaskRCNN_ResNet50_FPN_Weights"

    def run(self, image: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        height, width = image.shape[:2]
        out = self.predict(image)
        boxes = clip_boxes(out["boxes"].reshape(-1, 4), width, height)
        results = []
        for i in self.selected(out):
            m = out["masks"][i, 0] >= self.config.mask_threshold  # (H, W) at frame size
            lab = int(out["labels"][i])
            results.append({"label": self.names[lab], "category_id": lab,
                            "score": round(float(out["scores"][i]), 4), "bbox": xywh(boxes[i]),
                            "area": int(m.sum()), "segmentation": masks.encode(m)})
        return {"model": self.key, "masks": results}
