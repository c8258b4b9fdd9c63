"""Cut the bundled sample clip from OpenCV's vtest.avi (Debian package ``opencv-doc``).

The clip is frames ``[start, start + count)`` of the 768x576, 10 fps overhead street scene,
re-encoded as H.264 (CRF 18, near-transparent) so the repository stays small. Frames 0-499 of
vtest.avi are the development split (training, tests, demo); 500 on are the evaluation split and
are never bundled or trained on.

    apt-get install opencv-doc
    python tools/make_sample_clip.py            # writes sdk/assets/sample/street.mp4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
EVAL_SPLIT_START = 500


def cut(src: Path, dst: Path, start: int, count: int, crf: int) -> int:
    """Re-encode frames [start, start+count) of ``src`` into ``dst``; returns frames written."""
    if start + count > EVAL_SPLIT_START:
        raise SystemExit(f"error: frames {start}..{start + count - 1} reach the evaluation split "
                         f"(>= {EVAL_SPLIT_START}); pick frames below it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream("libx264", rate=10)
        vout.width, vout.height = vin.width, vin.height
        vout.pix_fmt = "yuv420p"
        vout.options = {"crf": str(crf), "preset": "slow", "tune": "film"}
        for i, frame in enumerate(inp.decode(vin)):
            if i < start:
                continue
            if written >= count:
                break
            img = frame.to_ndarray(format="rgb24")
            packet = vout.encode(av.VideoFrame.from_ndarray(img, format="rgb24"))
            out.mux(packet)
            written += 1
        out.mux(vout.encode(None))
    return written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=VTEST)
    p.add_argument("--out", type=Path, default=Path("sdk/assets/sample/street.mp4"))
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--crf", type=int, default=18)
    a = p.parse_args()
    if not a.src.is_file():
        print(f"error: {a.src} not found; install it with 'apt-get install opencv-doc' or pass --src",
              file=sys.stderr)
        return 2
    n = cut(a.src, a.out, a.start, a.count, a.crf)
    print(f"wrote {n} frames to {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
