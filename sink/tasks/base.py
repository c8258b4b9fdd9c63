"""The machine-task interface: a composed frame -> JSON-ready results for one task."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
from discover.sdk.registry import Backend, BackendConfig, Registry


class TaskModelConfig(BackendConfig):
    """Options every task model has."""


class TaskModel(Backend):
    """Runs one machine task on composed frames."""

    Config: ClassVar[type[TaskModelConfig]]

    def __init__(self, config: TaskModelConfig) -> None:
        self.config = config

    @abstractmethod
    def run(self, image: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        """Results for one frame; ``info`` holds the frame's region table and metadata."""


TASK_MODELS: Registry[TaskModel] = Registry("task model")
