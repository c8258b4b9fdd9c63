"""Data the package ships (profiles, label maps), found through ``importlib.resources`` so it
works the same from a clone, an editable install and a wheel."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def config_path(*parts: str) -> Path:
    """A file or folder of the shipped ``configs/`` data (``discover.configs`` when installed)."""
    root = files("discover.configs")
    for part in parts:  # one part at a time: a namespace package's path takes one
        root = root.joinpath(part)
    return Path(str(root))
