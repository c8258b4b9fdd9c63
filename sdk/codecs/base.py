"""The region codec interface.

A codec instance codes one camera stream (it may keep state between frames, e.g. for temporal
prediction). The symmetric API follows CompressAI: ``compress`` and ``decompress`` return dicts.

::

    frame, regions --compress--> {"side": bytes,             always sent (z / thumbnail)
                                  "regions": {rid: bytes},   each decodable given side only
                                  "rest": bytes | None}      outside the regions, when asked

    {"side", "regions": {rid: bytes}, "rest", "table": [Region], "size": (w, h)}
        --decompress--> {"x_hat": HxWx3 uint8 BGR frame from what arrived,
                         "region_pixels": {rid: crop}, "has_rest": bool,
                         "errors": {rid: reason}}       a bad region fails alone
                         "needs_refresh": bool}         (temporal codecs) a reference was
                                                        missing: ask the edge for an intra frame
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
from discover.sdk.regions import Region
from discover.sdk.registry import Backend, BackendConfig, Registry


class CodecConfig(BackendConfig):
    """Common codec options."""


class Codec(Backend):
    """Base class of region codecs."""

    Config: ClassVar[type[CodecConfig]]
    #: boxes are snapped outwards to multiples of this (the latent grid of learned codecs)
    align: int = 1

    def __init__(self, config: CodecConfig) -> None:
        self.config = config

    def descriptor(self) -> dict[str, Any]:
        """What goes into the stream's ``meta`` so a sink can build the matching decoder."""
        return {"type": self.key, "config": self.config.model_dump(mode="json"),
                "checkpoint": self.checkpoint_hash()}

    def request_refresh(self) -> None:
        """A sink asked (over the control topic) for a frame it can decode without history;
        codecs without temporal prediction have nothing to do."""

    def checkpoint_hash(self) -> str | None:
        """Content hash of the weights, None for codecs without weights."""
        return None

    @abstractmethod
    def compress(self, frame: np.ndarray, regions: list[Region], send_rest: bool) -> dict[str, Any]:
        """Code one BGR uint8 frame."""

    @abstractmethod
    def decompress(self, coded: dict[str, Any]) -> dict[str, Any]:
        """Decode what arrived of one frame."""


CODECS: Registry[Codec] = Registry("codec")
