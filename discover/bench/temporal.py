"""What temporal prediction saves: side, task and rest (sent on every frame) bits per second of
the learned codec with ``codec.temporal`` on and off, on the same frames with the same grounded
boxes, per rate point; with temporal on, how often z was re-sent and how the regions were
coded (intra, residual, skip).

    python -m discover.bench.temporal [--source VIDEO] [--max-frames 30] [--qualities 1,3,5] [--json]

Progress goes to stderr; the table (or one JSON line with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys


def run(source: str, max_frames: int, qualities: list[int],
        checkpoint: str | None = None) -> dict[str, dict[str, float]]:
    from discover.bench.codec import BoxSource
    from discover.bench.ground import load_frames
    from discover.sdk.codecs import CODECS

    frames, fps = load_frames(source, 0, max_frames)
    fps = fps or 10.0
    boxes = BoxSource(16, None, "nanodet")
    regions = [boxes.regions(f) for f in frames]
    out: dict[str, dict[str, float]] = {}
    for q in qualities:
        for temporal in (False, True):
            name = f"q{q}_{'temporal' if temporal else 'intra'}"
            print(f"[bench temporal] {name}", file=sys.stderr, flush=True)
            c = CODECS.create({"type": "learned", "checkpoint": checkpoint, "quality": q,
                               "temporal": {"enabled": temporal}})
            side = task = rest = z_new = 0
            modes = [0, 0, 0]
            for f, rs in zip(frames, regions, strict=True):
                coded = c.compress(f, rs, True)
                side += len(coded["side"])
                task += sum(map(len, coded["regions"].values()))
                rest += len(coded["rest"] or b"")
                z_new += bool(coded.stats.extra.get("z_new", True))
                for md, k in coded.stats.modes.items():
                    modes[("intra", "residual", "skip").index(md)] += k
            per_s = 8 * fps / len(frames) / 1000
            out[name] = {"side_kbps": round(side * per_s, 1), "task_kbps": round(task * per_s, 1),
                         "rest_kbps": round(rest * per_s, 1), "z_frames": z_new,
                         "frames": len(frames)}
            if temporal:
                out[name]["regions"] = dict(zip(("intra", "residual", "skip"), modes, strict=True))
    return out


def main(argv: list[str] | None = None) -> int:
    from discover.sdk.assets import SAMPLE_CLIP
    from discover.sdk.errors import DiscoverError

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=str(SAMPLE_CLIP))
    ap.add_argument("--max-frames", type=int, default=30)
    ap.add_argument("--qualities", default="1,3,5")
    ap.add_argument("--checkpoint", help="learned-codec checkpoint folder (default: shipped)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        qualities = [int(v) for v in a.qualities.split(",") if v.strip()]
        res = run(a.source, a.max_frames, qualities, a.checkpoint)
    except (DiscoverError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:14s} side {v['side_kbps']:7.1f} kbit/s  task {v['task_kbps']:7.1f} kbit/s  "
                  f"rest {v['rest_kbps']:7.1f} kbit/s  z on {v['z_frames']}/{v['frames']} frames"
                  + (f"  regions {v['regions']}" if "regions" in v else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
