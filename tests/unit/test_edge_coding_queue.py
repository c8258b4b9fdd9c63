"""The edge's coding queue (``edge.code_queue``): frames are coded and published in order, no
more than the queue's depth wait at once, and a coding error reaches the grounding thread."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from discover.edge.agent import _CodingThread


class _Agent:
    """The two things the coding thread needs of a CameraAgent: ``code`` and its camera."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.cam, self.metrics = SimpleNamespace(id="c1"), None
        self.fail_at, self.lock = fail_at, threading.Lock()
        self.in_flight = self.most = 0
        self.release = threading.Event()

    def code(self, image, index, capture_us, regions, ground_s, grounded):
        self.release.wait(5)
        if index == self.fail_at:
            raise RuntimeError(f"encoder failed on frame {index}")
        time.sleep(0.002 * (index % 3))  # uneven coding times
        return SimpleNamespace(messages=[(f"t/{index}", b"x")])


class _Pub:
    def __init__(self) -> None:
        self.indices: list[int] = []

    def submit(self, index, msgs) -> None:
        self.indices.append(index)


def _frame(i: int) -> SimpleNamespace:
    return SimpleNamespace(image=None, index=i, capture_us=i)


@pytest.mark.parametrize("depth", [1, 3])
def test_frames_are_published_in_order_and_the_queue_is_bounded(depth):
    agent, pub = _Agent(), _Pub()
    coding = _CodingThread(agent, pub, None, depth)
    waiting = []
    agent.release.set()
    for i in range(30):
        coding.submit(_frame(i), [], 0.0, True)
        waiting.append(len(coding.pending))
    coding.finish()
    coding.close()
    assert pub.indices == list(range(30))
    assert max(waiting) <= depth


def test_the_queue_lets_grounding_run_ahead_of_a_stalled_coder():
    agent, pub = _Agent(), _Pub()
    coding = _CodingThread(agent, pub, None, 3)
    for i in range(3):  # the coder is stalled: three frames still go in without blocking
        coding.submit(_frame(i), [], 0.0, True)
    assert len(coding.pending) == 3 and pub.indices == []
    agent.release.set()
    coding.finish()
    coding.close()
    assert pub.indices == [0, 1, 2]


def test_a_coding_error_is_raised_in_the_grounding_thread():
    agent, pub = _Agent(fail_at=2), _Pub()
    agent.release.set()
    coding = _CodingThread(agent, pub, None, 3)
    with pytest.raises(RuntimeError, match="frame 2"):
        for i in range(10):
            coding.submit(_frame(i), [], 0.0, True)
        coding.finish()
    coding.close()
    assert pub.indices[:2] == [0, 1] and 2 not in pub.indices
