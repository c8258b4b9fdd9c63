"""The grounder interface: task labels + frame -> labelled boxes (seed §3.1.2)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from discover.sdk.regions import Detection
from discover.sdk.registry import Backend, BackendConfig, Registry
from pydantic import Field

#: label a class-agnostic grounder gives every box; such boxes serve every task
ANY_OBJECT = "object"


class GrounderConfig(BackendConfig):
    """Options every grounder has."""

    margin: float = Field(0.1, ge=0, le=1, description="boxes grow by this share of their size")
    min_score: float = Field(0.0, ge=0, le=1, description="boxes scoring less are not sent")


class Grounder(Backend):
    """Finds the objects a task needs in one frame. Instances keep per-camera state."""

    Config: ClassVar[type[GrounderConfig]]
    #: True if labels are ignored and every box is ``ANY_OBJECT`` (serves every task)
    class_agnostic: ClassVar[bool] = False

    def __init__(self, config: GrounderConfig) -> None:
        self.config = config

    def describe(self) -> dict:
        return self.config.model_dump(mode="json")

    @abstractmethod
    def ground(self, frame: np.ndarray, labels: Sequence[str]) -> list[Detection]:
        """Boxes (pixels, BGR uint8 input) of objects whose label is in ``labels``."""


GROUNDERS: Registry[Grounder] = Registry("grounder")
