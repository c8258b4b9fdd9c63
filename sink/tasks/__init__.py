"""Task models, chosen per task under ``sink.task_models``. One import line per backend."""

from sink.tasks import regions  # noqa: F401
from sink.tasks.base import TASK_MODELS, TaskModel, TaskModelConfig

__all__ = ["TASK_MODELS", "TaskModel", "TaskModelConfig"]
