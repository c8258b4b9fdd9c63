"""Progress lines on stderr for long runs: rewritten in place on a terminal, one line every few
seconds otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


class Progress:
    def __init__(self, label: str, *, enabled: bool = True, every_s: float | None = None) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.enabled = enabled
        self.every_s = every_s if every_s is not None else (0.2 if self.tty else 5.0)
        self._last = 0.0
        self._shown = False

    def update(self, text: str | Callable[[], str], force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        line = f"[{self.label}] {text() if callable(text) else text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self._shown = True

    def done(self) -> None:
        if self.enabled and self.tty and self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
