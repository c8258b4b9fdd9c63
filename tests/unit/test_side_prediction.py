"""Region tables predicted from the previous frame's (sdk/stream.py SideContext) through the real
edge framing and the real sink pipeline: a lost frame makes the following predicted tables
undecodable, the sink asks the edge for a refresh on ``control``, and a full table resyncs it."""

from __future__ import annotations

import json

import numpy as np
from discover.sdk.codecs import CODECS
from discover.sdk.framing import frame_messages
from discover.sdk.regions import Region
from discover.sdk.stream import SideContext, StreamMeta
from discover.sink.config import SinkSection
from discover.sink.pipeline import SinkPipeline

CAM, PREFIX, W, H = "cam1", "discover", 192, 128


def table(i: int) -> list[Region]:
    """Two tracked objects walking right a grid cell a frame."""
    return [Region(0, (8 * i, 16, 8 * i + 32, 80), "person", 0.9, ("detection",)),
            Region(1, (100, 8 * (i % 4), 140, 8 * (i % 4) + 40), "car", 0.6, ("detection",))]


def edge_stream(frames: int, full_every: int) -> tuple[StreamMeta, list[list[tuple[str, bytes]]]]:
    codec = CODECS.create("classical")
    meta = StreamMeta(CAM, W, H, 10.0, ["detection"], ["object", "person", "car"],
                      codec.descriptor())
    side = SideContext(full_every)
    img = np.full((H, W, 3), 90, np.uint8)
    msgs = [frame_messages(PREFIX, meta, i, 1000 + i, table(i),
                           codec.compress(img, table(i), send_rest=False), max_packet=65536,
                           side_context=side) for i in range(frames)]
    return meta, msgs


def test_sink_resyncs_after_a_lost_frame_at_the_next_full_table():
    meta, msgs = edge_stream(12, full_every=8)
    sent: list[tuple[str, dict]] = []
    pipe = SinkPipeline(SinkSection(tasks=["detection"], output="none"), PREFIX,
                        publish=lambda t, p: sent.append((t, json.loads(p))))
    delivered: list[tuple[int, list]] = []
    pipe.listeners.append(lambda rep: delivered.append((rep.frame, rep.regions)))
    pipe.feed(f"{PREFIX}/{CAM}/meta", meta.to_json())
    for i, frame in enumerate(msgs):
        if i == 3:
            continue  # frame 3 lost on the way
        for t, p in frame:
            pipe.feed(t, p)
        pipe.process_ready(flush=True)
    got = [f for f, _ in delivered]
    assert got == [0, 1, 2, 8, 9, 10, 11]  # 4..7 continue frame 3's table; 8 is a full table
    assert pipe.counters["undecodable_side_reference"] == 4
    assert [r.box for r in dict(delivered)[9]] == [r.box for r in table(9)]
    control = [body for t, body in sent if t == f"{PREFIX}/{CAM}/control"]
    assert control and control[0]["request"] == "refresh" and control[0]["frame"] == 4


def test_predicted_tables_are_smaller_on_the_wire():
    _, predicted = edge_stream(8, full_every=50)
    _, full = edge_stream(8, full_every=1)
    side = [sum(len(p) for t, p in f if t.endswith("/side")) for f in predicted[1:]]
    side_full = [sum(len(p) for t, p in f if t.endswith("/side")) for f in full[1:]]
    assert all(a < b for a, b in zip(side, side_full, strict=True))
