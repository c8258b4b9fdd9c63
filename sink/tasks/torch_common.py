"""What the torch-based task models share: device choice and checkpoint loading.

Hub weights cannot be downloaded at run time (sinks may have no internet), so checkpoints come
from a local file (config ``weights: PATH``) or from torch's hub cache under the file name
torchvision's own download would use (``torch.hub.get_dir()/checkpoints/<name>``; set
``TORCH_HOME`` to move it), and a missing file is one error line naming it and how to get it.
``weights: random`` builds the model with random weights, for tests and timing only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from discover.sdk.devices import torch_device
from discover.sdk.errors import DiscoverError
from pydantic import Field

if TYPE_CHECKING:
    import torch

Device = Literal["auto", "cpu", "cuda"]
DEVICE_FIELD: Any = Field("auto", description="auto: cuda when torch sees a GPU, else cpu")
WEIGHTS_FIELD: Any = Field(
    None, description="checkpoint file (a state dict); none: the torch hub cache; "
                      "'random': random weights, for tests only")


def require_torchvision(model: str) -> None:
    """Import torch and torchvision, or one line saying how to install them."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        raise DiscoverError(f"task model {model} needs torch and torchvision ({e.name} is "
                            "missing): pip install 'discover-sdk[models]'") from None
    except RuntimeError as e:  # PyPI's CUDA torchvision next to a CPU-only torch
        raise DiscoverError(f"task model {model}: torchvision does not load ({str(e)[:80]}); "
                            "with a CPU-only torch run tools/torchvision_cpu_fix.py") from None


def resolve_device(device: Device, model: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is an error."""
    return torch_device(device, f"task model {model}: device")


def hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` would keep its download."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def checkpoint_path(weights: Path | str | None, url: str, model: str) -> Path | None:
    """The checkpoint file to load, or None for ``random``; missing -> one-line DiscoverError."""
    if isinstance(weights, str) and weights == "random":
        return None
    path = Path(weights) if weights is not None else hub_checkpoint(url)
    if not path.is_file():
        name = url.rsplit("/", 1)[-1]
        raise DiscoverError(
            f"task model {model}: weights not found: {path}. Download {url} on a machine with "
            f"internet and copy it there (the torch hub cache, file {name}) or point "
            f"'weights' at it; 'weights: random' runs untrained, for tests only")
    return path


def load_state_dict(path: Path, model: str) -> dict[str, Any]:
    """Read a state dict saved with ``torch.save`` (tensors only, no pickled code)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged or foreign files
        raise DiscoverError(f"task model {model}: cannot read weights {path} "
                            f"({type(e).__name__}); the file is damaged or not a torch "
                            "checkpoint: download it again") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DiscoverError(f"task model {model}: {path} holds a {type(state).__name__}, not a "
                            "state dict; save model.state_dict()")
    return state


def apply_state_dict(net: torch.nn.Module, state: dict[str, Any], path: Path, model: str) -> None:
    """Load ``state`` strictly; a mismatch is one line naming the file and the first keys."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)[:200]]
        raise DiscoverError(f"task model {model}: {path} does not fit the model "
                            f"({first[0].strip()[:200]}); use the checkpoint named in the "
                            "docs for this model") from None
