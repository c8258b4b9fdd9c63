"""Checkpoint folders of the learned codec, diffusers style::

    <folder>/config.json          {"format", "version", "model": ModelConfig, "training": record,
                                   "weights": file name, "weights_sha256": hex}
    <folder>/model.safetensors    every parameter and buffer, including the integer coding tables
                                  (CDFs, fixed-point hyper decoder); model.pt if safetensors
                                  is not installed

The content hash is the sha256 of the weights file's bytes (short form: 16 hex digits). It goes
into the stream's ``meta``; a sink whose checkpoint hashes differently refuses the stream. The
tables are computed once by ``model.update()`` when saving and restored as stored when loading,
so two machines that load the same folder code with the same integer tables.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discover.sdk.errors import DiscoverError

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
TORCH_NAME = "model.pt"
FORMAT = "discover-learned-codec"
FORMAT_VERSION = 1
HASH_CHARS = 16
#: where the shipped checkpoints live (``sdk/codecs/learned/checkpoints/<name>``)
CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"
TRAIN_HINT = "train one with 'discover train codec --out DIR'"


def short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HASH_CHARS]


def _have_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def weights_bytes(model: Any) -> tuple[bytes, str]:
    """The exact bytes of the weights file for ``model`` and its file name."""
    import torch

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if _have_safetensors():
        from safetensors.torch import save

        return save(state), SAFETENSORS_NAME
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue(), TORCH_NAME


def model_hash(model: Any) -> str:
    """Content hash of an in-memory model: the hash its saved weights file would have."""
    return short_hash(weights_bytes(model)[0])


def save_pretrained(model: Any, folder: str | Path, training: dict[str, Any] | None = None) -> str:
    """Make the coding tables, then write ``config.json`` and the weights; returns the hash."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.update(force=True)
    data, name = weights_bytes(model)
    for stale in (SAFETENSORS_NAME, TORCH_NAME):
        if stale != name and (folder / stale).exists():
            (folder / stale).unlink()
    tmp = folder / (name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(folder / name)
    config = {"format": FORMAT, "version": FORMAT_VERSION, "model": model.config.to_dict(),
              "training": training or {}, "weights": name,
              "weights_sha256": hashlib.sha256(data).hexdigest()}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return short_hash(data)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, tables restored) and what the folder says."""

    model: Any
    hash: str
    folder: Path
    training: dict[str, Any]


def load_pretrained(folder: str | Path, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint folder; every problem is one :class:`DiscoverError` line."""
    import torch
    from discover.sdk.codecs.learned.model import DiscoverCodecModel, ModelConfig

    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise DiscoverError(f"learned codec checkpoint folder {folder} does not exist; "
                            f"{TRAIN_HINT} or set codec.checkpoint to a trained folder")
    if not cfg_path.is_file():
        raise DiscoverError(f"learned codec checkpoint {folder} has no {CONFIG_NAME}; "
                            f"{TRAIN_HINT} or copy the whole checkpoint folder")
    try:
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != FORMAT:
            raise ValueError(f"format is {cfg.get('format')!r}, not {FORMAT!r}")
        model_cfg = ModelConfig.from_dict(cfg["model"])
        name = cfg.get("weights", SAFETENSORS_NAME)
        if name not in (SAFETENSORS_NAME, TORCH_NAME):
            raise ValueError(f"weights file name {name!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise DiscoverError(f"malformed {cfg_path}: {e}; re-copy or retrain the checkpoint") from None
    wpath = folder / name
    if not wpath.is_file():
        raise DiscoverError(f"learned codec weights {wpath} are missing; copy the whole "
                            f"checkpoint folder or {TRAIN_HINT}")
    data = wpath.read_bytes()
    want = cfg.get("weights_sha256")
    if want and hashlib.sha256(data).hexdigest() != want:
        raise DiscoverError(f"{wpath} does not match the sha256 in {cfg_path} (damaged or "
                            "replaced); re-copy the checkpoint folder")
    try:
        if name == SAFETENSORS_NAME:
            if not _have_safetensors():
                raise DiscoverError(f"{wpath} needs the safetensors package: "
                                    "pip install safetensors")
            from safetensors.torch import load

            state = load(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model = DiscoverCodecModel(model_cfg)
        # checkpoints saved before temporal coding have no residual model: plain hyperprior
        state.setdefault("residual_offsets", model.residual_offsets.clone())
        model.load_state_dict(state)
    except DiscoverError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable weights file is the same user error
        raise DiscoverError(f"cannot load {wpath} ({type(e).__name__}: {e}); re-copy or "
                            "retrain the checkpoint") from None
    if not model.coding_ready:
        raise DiscoverError(f"{wpath} has no coding tables (saved without update()); "
                            "re-save it with save_pretrained")
    model.eval().to(device)
    return Checkpoint(model, short_hash(data), folder, cfg.get("training") or {})
