"""The ``video`` codec end to end: edge -> real Mosquitto -> sink. A detection sink that joins
mid-stream cannot decode predicted frames, asks on <prefix>/<camera>/control, and decodes from
the keyframe the edge then sends; it never receives the human view."""

from __future__ import annotations

import threading
from typing import Any

from conftest import (
    CLIP_FRAMES,
    PREFIX,
    SinkThread,
    assert_recovered,
    broker_config,
    wait_until,
)
from discover.edge.agent import CameraAgent
from discover.edge.config import CameraConfig, EdgeSection
from discover.sink.config import SinkSection

VIDEO = {"type": "video", "preset": "ultrafast", "rest_crf": 30}  # rest_crf: rest is sent


def test_late_video_sink_asks_for_a_keyframe_and_recovers(broker, clip, lacking_reference):
    cfg = broker_config(broker.url)
    edge_cfg = EdgeSection(codec=VIDEO, grounder={"type": "motion"}, cameras=[CameraConfig(
        id="cam0", source=str(clip), tasks=["detection"], realtime=True, fps=20)])
    agent = CameraAgent(edge_cfg.cameras[0], edge_cfg, cfg, PREFIX)
    seen: list[int] = []
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(agent.run(on_frame=seen.append)), daemon=True)
    t.start()
    try:
        wait_until(lambda: len(seen) >= 15, 30, "the edge to stream 15 frames")
        sink = SinkThread(SinkSection(camera="cam0", tasks=["detection"], rest=False,
                                      idle_timeout_s=10.0, refresh_interval_s=0.2),
                          cfg).start()
        t.join(60)
        assert not t.is_alive()
        summary = sink.finish(30)
    finally:
        t.join(5)
    got = sink.indices("cam0")
    assert got and got[-1] == CLIP_FRAMES - 1, (got, summary, out)
    assert out["refresh_requests"] >= 1 and summary["refresh_requests"] >= 1, (out, summary)
    # the first frame and the requested refresh are keyframes, everything else predicted
    assert out["intra_frames"] >= 2 and out["region_modes"]["keyframe"] >= 2, out
    assert out["region_modes"]["predicted"] > out["region_modes"]["keyframe"], out
    # only the frames before that keyframe arrived could not be decoded
    assert_recovered(lacking_reference, got, summary)
    # a detection sink takes side + task/detection only: no human-view bytes
    assert set(summary["bytes_by_substream"]) == {"side", "task"}, summary
    assert out["bytes_by_substream"].get("rest", 0) > 0  # while the edge did send rest
