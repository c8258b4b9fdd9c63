"""Bundled offline models (ONNX) and their thin runtime wrappers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from discover.sdk.errors import DiscoverError


class ModelWeightsNotFoundError(DiscoverError, FileNotFoundError):
    """A weights file is missing; the message names it and the command that makes it."""


def require_onnxruntime():  # noqa: ANN201 - the module, imported lazily
    """onnxruntime, or one clear error naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise DiscoverError("this model runs on ONNX Runtime, which is not installed: "
                            "pip install 'discover-sdk[edge]' (or [sink], or [gpu] for "
                            "onnxruntime-gpu)") from None
    return onnxruntime


def open_session(path: Path, *, what: str, origin: str, convert_command: str,
                 threads: int = 2, providers: list[str] | None = None) -> Any:
    """An ONNX Runtime session on ``path`` (CUDA first when usable, else CPU), with one-line
    errors that say which file is missing or damaged and which command recreates it.

    ``what`` names the model in messages; ``origin`` says where the conversion takes it from.
    """
    if not path.is_file():
        raise ModelWeightsNotFoundError(
            f"{what} weights not found: {path}. Create them with `{convert_command}` "
            f"(converts {origin}; see sdk/models/weights/NOTICE.md) or pass the path of an "
            f"existing {path.name}.")
    ort = require_onnxruntime()
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in available] or ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise DiscoverError(
            f"cannot load {what} weights {path} ({type(exc).__name__}); the file is damaged or "
            f"not ONNX: recreate it with `{convert_command}`.") from exc


@dataclass(frozen=True)
class Detections:
    """Detections in input-image pixels: ``boxes`` (N, 4) x0, y0, x1, y1 float32,
    ``scores`` (N,) float32, ``class_ids`` (N,) int64 indices into ``CLASS_NAMES`` (set by
    each detector's subclass), sorted by descending score."""

    CLASS_NAMES: ClassVar[tuple[str, ...]] = ()
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def labels(self) -> list[str]:
        """Class names of the detections, in order."""
        return [self.CLASS_NAMES[int(c)] for c in self.class_ids]
