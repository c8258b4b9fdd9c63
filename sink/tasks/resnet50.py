"""``resnet50``: ImageNet-1k classification with torchvision's ResNet-50.

Weights (not available offline here): ``weights: PATH`` to a state dict, or the torch hub cache
file torchvision itself would download, ``<torch hub dir>/checkpoints/resnet50-11ad3fa6.pth``
(``checkpoint: IMAGENET1K_V2``, default) or ``resnet50-0676ba61.pth`` (``IMAGENET1K_V1``);
``weights: random`` for tests. Preprocessing and class names come from the chosen weights'
torchvision metadata (V2: shorter side 232, V1: 256; centre crop 224; ImageNet mean/std). What
is classified: :mod:`sink.tasks.classify`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from discover.sink.tasks.base import TASK_MODELS
from discover.sink.tasks.classify import ClassifierConfig, ClassifierTask
from discover.sink.tasks.torch_common import (
    WEIGHTS_FIELD,
    apply_state_dict,
    checkpoint_path,
    load_state_dict,
    require_torchvision,
    resolve_device,
)


class ResNet50Config(ClassifierConfig):
    type: Literal["resnet50"] = "resnet50"
    weights: Literal["random"] | Path | None = WEIGHTS_FIELD
    checkpoint: Literal["IMAGENET1K_V2", "IMAGENET1K_V1"] = "IMAGENET1K_V2"


@TASK_MODELS.register
class ResNet50Task(ClassifierTask):
    key = "resnet50"
    Config = ResNet50Config
    config: ResNet50Config

    def __init__(self, config: ResNet50Config) -> None:
        super().__init__(config)
        require_torchvision(self.key)
        from torchvision.models import ResNet50_Weights, resnet50

        spec = ResNet50_Weights[config.checkpoint]
        path = checkpoint_path(config.weights, spec.url, self.key)
        self.device = resolve_device(config.device, self.key)
        net = resnet50(weights=None, num_classes=len(spec.meta["categories"]))
        if path is not None:
            apply_state_dict(net, load_state_dict(path, self.key), path, self.key)
        self.net = net.eval().to(self.device)
        self.names = list(spec.meta["categories"])
        t = spec.transforms()
        self.size, self.resize = int(t.crop_size[0]), int(t.resize_size[0])
        self.mean = np.asarray(t.mean, np.float32)
        self.std = np.asarray(t.std, np.float32)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
