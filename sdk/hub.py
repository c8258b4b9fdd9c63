"""Small helpers shared by the backends that load Hugging Face models (Grounding DINO, the
Stable Diffusion composers): telling a folder from a hub id, and a short error reason."""

from __future__ import annotations

import os
import re

#: ``name`` or ``owner/name``, what a Hugging Face hub id looks like
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def short_reason(e: BaseException) -> str:
    """First line of an exception, short, for a one-line error."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{e.__class__.__name__}: {text[:200]}" if text else e.__class__.__name__


def is_path_like(name: str) -> bool:
    """True if ``name`` can only be a folder path (not a Hugging Face model id)."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name
            or not HUB_ID.match(name))
