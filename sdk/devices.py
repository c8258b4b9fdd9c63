"""Torch device choice, the same rule for every backend that runs torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from discover.sdk.errors import DiscoverError

if TYPE_CHECKING:
    import torch


def torch_device(requested: str, setting: str) -> torch.device:
    """``auto`` -> cuda if torch sees a GPU, else cpu. ``cuda`` without a GPU is a user error
    naming ``setting``, the config key that asked for it."""
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise DiscoverError(f"{setting} is 'cuda' but torch sees no CUDA GPU (a CPU build of "
                            f"torch or no driver); set {setting} to 'cpu' or 'auto'")
    return torch.device(requested)
