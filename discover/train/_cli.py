"""The shared tail of the training commands (``discover train codec|control``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from discover.sdk.errors import DiscoverError

Log = Callable[[str], None]


def run_training(train: Callable[[Log], dict[str, Any]], as_json: bool) -> int:
    """Run ``train`` with its log lines on stderr. A DiscoverError is one ``error:`` line and
    its exit code; with ``as_json`` the result, less its per-step history, is one JSON line on
    stdout."""
    try:
        result = train(lambda line: print(line, file=sys.stderr, flush=True))
    except DiscoverError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    return 0
