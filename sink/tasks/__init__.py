"""Task models, chosen per task under ``sink.task_models``. One import line per backend."""

from discover.sink.tasks import (  # noqa: F401
    efficientnet,
    fasterrcnn,
    maskrcnn,
    nanodet,
    person_mask,
    regions,
    resnet50,
)
from discover.sink.tasks.base import TASK_MODELS, TaskModel, TaskModelConfig

__all__ = ["TASK_MODELS", "TaskModel", "TaskModelConfig"]
