"""``direct``: the codec's own pixel reconstruction, composed of what arrived."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from discover.sink.composers.base import COMPOSERS, Composer, ComposerConfig


class DirectConfig(ComposerConfig):
    type: Literal["direct"] = "direct"


@COMPOSERS.register
class DirectComposer(Composer):
    key = "direct"
    Config = DirectConfig

    def compose(self, decoded: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        return decoded["x_hat"]
