"""User-facing errors.

Every failure a user can cause is raised as :class:`DiscoverError` with one line that names the
bad thing and the fix; the command line prints that line and exits non-zero, never a traceback.
"""

from __future__ import annotations


class DiscoverError(Exception):
    """An error caused by input or environment, with a one-line message saying how to fix it."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class PacketError(ValueError):
    """A packet that cannot be parsed; ``reason`` is the short counter name it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
