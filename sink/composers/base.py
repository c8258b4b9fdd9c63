"""The composer interface: decoded substreams -> the full frame a task or a person sees."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
from discover.sdk.registry import Backend, BackendConfig, Registry


class ComposerConfig(BackendConfig):
    """Options every composer has."""


class Composer(Backend):
    """Builds a frame from a codec's ``decompress`` output. One instance per camera."""

    Config: ClassVar[type[ComposerConfig]]
    #: True if the composer needs the rest substream to be useful
    needs_rest: ClassVar[bool] = False

    def __init__(self, config: ComposerConfig) -> None:
        self.config = config

    @abstractmethod
    def compose(self, decoded: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        """A BGR uint8 frame from ``decoded`` (see sdk.codecs.base) and frame ``info``."""


COMPOSERS: Registry[Composer] = Registry("composer")
