"""``regions``: report the edge's grounded regions of the task (no model at the sink).

The baseline every sink has: boxes, labels and scores exactly as the edge's grounder found them,
COCO-style (``bbox`` as x, y, width, height).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from discover.sink.tasks.base import TASK_MODELS, TaskModel, TaskModelConfig


class RegionsConfig(TaskModelConfig):
    type: Literal["regions"] = "regions"


@TASK_MODELS.register
class RegionsTask(TaskModel):
    key = "regions"
    Config = RegionsConfig

    def run(self, image: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        task = info["task"]
        dets = []
        for r in info["regions"]:
            if task not in r.tasks:
                continue
            x0, y0, x1, y1 = r.box
            dets.append({"id": r.rid, "label": r.label, "score": round(r.score, 4),
                         "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "decoded": r.rid not in info["region_errors"]})
        return {"model": self.key, "detections": dets}
