"""Bundled offline models (ONNX) and their thin runtime wrappers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdk.errors import DiscoverError


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
