"""What temporal prediction saves: side, task and rest (sent on every frame) bits per second of
the learned codec with ``codec.temporal`` on and off, on the same frames with the same grounded
boxes, per rate point; with temporal on, how often z was re-sent and how the regions were
coded (intra, residual, skip); every frame is decoded (PSNR of the full view and inside the
boxes) and the temporal stream's intra frames are compared byte for byte with the temporal-off
frames.

    python -m discover.bench.temporal [--source VIDEO] [--max-frames 30] [--qualities 1,3,5] [--json]

Progress goes to stderr; the table (or one JSON line with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np


def run(source: str, max_frames: int, qualities: list[int],
        checkpoint: str | None = None) -> dict[str, dict[str, Any]]:
    from discover.bench.codec import BoxSource, _code, measure, region_mask
    from discover.bench.ground import load_frames
    from discover.sdk.codecs import CODECS

    frames, fps = load_frames(source, 0, max_frames)
    fps = fps or 10.0
    boxes = BoxSource(16, None, "nanodet")
    regions = [boxes.regions(f) for f in frames]
    out: dict[str, dict[str, Any]] = {}
    for q in qualities:
        intra_frames: list[bytes] = []  # per frame, the temporal-off payloads
        for temporal in (False, True):
            name = f"q{q}_{'temporal' if temporal else 'intra'}"
            print(f"[bench temporal] {name}", file=sys.stderr, flush=True)
            cfg = {"type": "learned", "checkpoint": checkpoint, "quality": q,
                   "temporal": {"enabled": temporal}}
            c, sink = CODECS.create(cfg), CODECS.create(cfg)
            side = task = rest = z_new = same = errors = 0
            modes = [0, 0, 0]
            psnrs, region_psnrs = [], []
            for i, (f, rs) in enumerate(zip(frames, regions, strict=True)):
                bits, x_hat, coded = _code(c, sink, f, rs, send_rest=True)
                m = measure(f, x_hat, rs, region_mask(rs, *f.shape[:2]), msssim=False)
                psnrs.append(m["psnr"])
                if m["region_psnr"] is not None:
                    region_psnrs.append(m["region_psnr"])
                errors += bits["decode_errors"]
                side += len(coded["side"])
                task += sum(map(len, coded["regions"].values()))
                rest += len(coded["rest"] or b"")
                z_new += bool(coded.stats.extra.get("z_new", True))
                for md, k in coded.stats.modes.items():
                    modes[("intra", "residual", "skip").index(md)] += k
                blob = _payloads(coded)
                if not temporal:
                    intra_frames.append(blob)
                elif coded.stats.intra:
                    same += blob == intra_frames[i]
            per_s = 8 * fps / len(frames) / 1000
            out[name] = {"side_kbps": round(side * per_s, 1), "task_kbps": round(task * per_s, 1),
                         "rest_kbps": round(rest * per_s, 1), "z_frames": z_new,
                         "frames": len(frames), "psnr": round(float(np.mean(psnrs)), 3),
                         "region_psnr": round(float(np.mean(region_psnrs)), 3)
                         if region_psnrs else None, "decode_errors": errors}
            if temporal:
                out[name]["regions"] = dict(zip(("intra", "residual", "skip"), modes, strict=True))
                # intra frames of the temporal stream byte-identical to the temporal-off ones
                out[name]["intra_frames_identical"] = same
    return out


def _payloads(coded: Any) -> bytes:
    """Every payload of a coded frame, in a fixed order (to compare two streams' frames)."""
    parts = [coded["side"], *(coded["regions"][k] for k in sorted(coded["regions"])),
             coded["rest"] or b""]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


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
                  f"rest {v['rest_kbps']:7.1f} kbit/s  z on {v['z_frames']}/{v['frames']} frames  "
                  f"PSNR {v['psnr']:.2f} dB (regions {v['region_psnr']})"
                  + (f"  regions {v['regions']}" if "regions" in v else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
