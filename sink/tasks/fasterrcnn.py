"""``fasterrcnn``: COCO detection with torchvision's Faster R-CNN ResNet-50 FPN.

Weights (not available offline here): ``weights: PATH`` to a state dict, or the torch hub cache
file torchvision itself would download,
``<torch hub dir>/checkpoints/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``; ``weights: random``
for tests. Class names: the weights' metadata (COCO, 91 ids; the model's label index *is* the
COCO category id; the unused "N/A" ids are never reported). Results as ``nanodet``::

    {"model": "fasterrcnn", "detections": [{"label", "score", "bbox": [x, y, w, h],
      "category_id"}]}

``min_size``/``max_size`` (torchvision's input resize) and ``proposals`` (RPN boxes kept per
image) trade accuracy for speed; torchvision's defaults are 800, 1333 and 1000.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from discover.sink.tasks.base import TASK_MODELS, TaskModel, TaskModelConfig
from discover.sink.tasks.coco import clip_boxes, detection, label_filter
from discover.sink.tasks.torch_common import (
    DEVICE_FIELD,
    WEIGHTS_FIELD,
    Device,
    apply_state_dict,
    checkpoint_path,
    load_state_dict,
    require_torchvision,
    resolve_device,
)
from pydantic import Field


class FasterRCNNConfig(TaskModelConfig):
    type: Literal["fasterrcnn"] = "fasterrcnn"
    weights: Literal["random"] | Path | None = WEIGHTS_FIELD
    score_threshold: float = Field(0.5, ge=0, le=1, description="0.05 for COCO AP runs")
    iou_threshold: float = Field(0.5, gt=0, le=1, description="per-class NMS")
    max_detections: int = Field(100, ge=1)
    classes: list[str] | None = Field(None, description="COCO class names to report "
                                                        "(default: all)")
    min_size: int = Field(800, ge=32, description="shorter side the model resizes to")
    max_size: int = Field(1333, ge=32, description="longer side cap")
    proposals: int = Field(1000, ge=1, description="RPN proposals kept per image")
    device: Device = DEVICE_FIELD


class TorchvisionDetector(TaskModel):
    """A torchvision COCO detector: builder, weights enum, and the result entries."""

    config: FasterRCNNConfig
    builder_name: ClassVar[str]
    weights_enum: ClassVar[str]

    def __init__(self, config: FasterRCNNConfig) -> None:
        super().__init__(config)
        require_torchvision(self.key)
        from torchvision.models import detection as tvd

        spec = getattr(tvd, self.weights_enum).COCO_V1
        path = checkpoint_path(config.weights, spec.url, self.key)
        self.device = resolve_device(config.device, self.key)
        self.names: list[str] = list(spec.meta["categories"])
        builder: Callable[..., Any] = getattr(tvd, self.builder_name)
        # Thresholds go into the model so NMS and the per-image cap see the same boxes.
        net = builder(weights=None, weights_backbone=None, num_classes=len(self.names),
                      min_size=config.min_size, max_size=config.max_size,
                      box_score_thresh=config.score_threshold,
                      box_nms_thresh=config.iou_threshold,
                      box_detections_per_img=1000 if config.classes else config.max_detections,
                      rpn_post_nms_top_n_test=config.proposals,
                      rpn_pre_nms_top_n_test=max(config.proposals, 1000))
        if path is not None:
            apply_state_dict(net, load_state_dict(path, self.key), path, self.key)
        self.net = net.eval().to(self.device)
        real = [n for n in self.names if n not in ("__background__", "N/A")]
        self.keep = label_filter(config.classes, real, self.key)

    def predict(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """torchvision's output for one BGR frame, as NumPy arrays."""
        import torch

        rgb = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))
        x = torch.from_numpy(rgb).to(self.device).float().div_(255.0)
        with torch.inference_mode():
            out = self.net([x])[0]
        return {k: v.float().cpu().numpy() if k != "labels" else v.cpu().numpy()
                for k, v in out.items()}

    def selected(self, out: dict[str, np.ndarray]) -> list[int]:
        """Indices of the detections to report: real classes, in the filter, capped."""
        keep = []
        for i, lab in enumerate(out["labels"].tolist()):
            name = self.names[lab] if 0 <= lab < len(self.names) else "N/A"
            if name in ("__background__", "N/A"):
                continue
            if self.keep is None or name in self.keep:
                keep.append(i)
        return keep[: self.config.max_detections]

    def run(self, image: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        height, width = image.shape[:2]
        out = self.predict(image)
        boxes = clip_boxes(out["boxes"].reshape(-1, 4), width, height)
        dets = [detection(self.names[int(out["labels"][i])], out["scores"][i], boxes[i],
                          int(out["labels"][i]))
                for i in self.selected(out)]
        return {"model": self.key, "detections": dets}


@TASK_MODELS.register
class FasterRCNNTask(TorchvisionDetector):
    key = "fasterrcnn"
    Config = FasterRCNNConfig
    builder_name = "fasterrcnn_resnet50_fpn"
    weights_enum = "FasterRCNN_ResNet50_FPN_Weights"
