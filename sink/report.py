"""What the sink pipeline tells its listeners (web view, metrics) about each frame it delivered.

Listeners run on the sink's processing thread, so they must be quick: copy what they need and
hand heavy work (JPEG, video encoding) to their own threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FrameReport:
    """One decoded, composed and analysed frame."""

    camera: str
    frame: int
    capture_us: int
    fps: float  # the camera's nominal rate (stream descriptor)
    image: np.ndarray  # the composed BGR frame (not copied: do not modify)
    results: dict[str, Any]  # task -> that task model's result
    regions: list[Any]  # the side table's regions (sdk.regions.Region)
    substream_bytes: dict[str, int]  # substream ("side", "task/<t>", "rest") -> payload bytes
    complete: bool
    has_rest: bool
    decoded_at: float  # time.time() when the tasks finished
    #: seconds this frame spent in each stage: "decode", "compose", "tasks"
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        """Capture -> decoded (and analysed), in seconds."""
        return self.decoded_at - self.capture_us / 1e6

    def results_json(self) -> dict[str, Any]:
        """The same record the sink writes to ``results/<frame>.json``."""
        return {"camera": self.camera, "frame": self.frame, "capture_us": self.capture_us,
                "complete": self.complete, "has_rest": self.has_rest,
                "regions": [r.to_json() for r in self.regions],
                "tasks": self.results}
