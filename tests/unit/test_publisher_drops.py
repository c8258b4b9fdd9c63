"""The edge publisher's bounded queue reports each frame it drops (sdk/transport/mqtt.py), so
the agent can make the next region table a full one (a later table must not refer to a frame no
sink will ever see)."""

from __future__ import annotations

import threading

from discover.sdk.transport.mqtt import FramePublisher


class _StalledLink:
    """A link that never connects: the publisher's worker takes nothing off the queue."""

    def __init__(self) -> None:
        self.connected = threading.Event()

    def wait_unacked_below(self, limit: int, timeout: float) -> bool:
        return False

    def publish(self, topic: str, payload: bytes) -> bool:  # pragma: no cover - never reached
        raise AssertionError("a stalled link publishes nothing")


def test_dropped_frames_are_reported_oldest_first():
    pub = FramePublisher(_StalledLink(), queue_frames=3)  # type: ignore[arg-type]
    dropped: list[int] = []
    pub.on_dropped = dropped.append
    try:
        for i in range(7):
            pub.submit(i, [("t", b"x")])
        assert dropped == [0, 1, 2, 3]
        assert [i for i, _ in pub.queue] == [4, 5, 6]
        assert pub.counters["frames_dropped"] == 4
    finally:
        assert pub.close(timeout=1.0) is False  # nothing could be sent
    assert pub.counters["frames_dropped"] == 7  # close drops what was still queued
