"""Sink memory under a flood of forged camera ids (issue 14): N cameras, each a valid meta and
one frame of the learned codec (shipped checkpoint, 192x128 crop of the sample clip), into one
``camera: +`` sink pipeline. Prints the resident memory before and after, its peak, how many
cameras the sink holds and the time per camera.

    python -m discover.bench.camera_flood --cameras 1000 [--max-cameras 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

from discover.bench.fuzz_stream import CAM, PREFIX, _clip_frames


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def flood(cameras: int, max_cameras: int, codec: str) -> dict[str, Any]:
    import torch

    from discover.sdk.codecs import CODECS
    from discover.sdk.framing import frame_messages
    from discover.sdk.regions import Region
    from discover.sdk.stream import StreamMeta
    from discover.sink.config import SinkSection
    from discover.sink.pipeline import SinkPipeline

    torch.set_num_threads(1)
    codec_name = codec
    cfg = {"type": "learned", "temporal": {"enabled": False}} if codec == "learned" \
        else {"type": codec_name}
    codec = CODECS.create(cfg)
    img = _clip_frames(1, (192, 128))[0]
    regions = [Region(1, (16, 16, 64, 96), "person", 0.9, ("detection",))]
    coded = codec.compress(img, regions, send_rest=False)
    pipe = SinkPipeline(SinkSection(tasks=["detection"], output="none",
                                    max_cameras=max_cameras), PREFIX)
    before = _rss_mib()
    t0 = time.perf_counter()
    for i in range(cameras):
        cam = f"{CAM}-forged-{i}"
        meta = StreamMeta(camera=cam, width=192, height=128, fps=10.0, tasks=["detection"],
                          labels=["object", "person"], codec=codec.descriptor())
        pipe.feed(f"{PREFIX}/{cam}/meta", meta.to_json())
        for t, p in frame_messages(PREFIX, meta, 0, 1000, regions, coded, max_packet=65536):
            pipe.feed(t, p)
        pipe.process_ready(flush=True)
    secs = time.perf_counter() - t0
    return {"cameras_sent": cameras, "max_cameras": max_cameras, "codec": codec_name,
            "cameras_held": len(pipe.cameras), "frames_decoded": pipe.frames_out,
            "refused_messages": pipe.counters["messages_over_camera_cap"],
            "rss_before_mib": round(before, 1), "rss_after_mib": round(_rss_mib(), 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "ms_per_camera": round(1000 * secs / cameras, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m discover.bench.camera_flood",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=1000)
    ap.add_argument("--max-cameras", type=int, default=64, help="sink.max_cameras")
    ap.add_argument("--codec", default="learned", choices=["learned", "classical"])
    print(json.dumps(flood(**{k.replace("-", "_"): v for k, v in
                              vars(ap.parse_args(argv)).items()})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
