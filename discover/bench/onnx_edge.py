"""Edge analysis on torch vs ONNX Runtime: time per frame and bitstream parity.

    python -m discover.bench.onnx_edge                      # random 'small' model, 768x576, 1 thread
    python -m discover.bench.onnx_edge --checkpoint sdk/codecs/learned/checkpoints/small --json

Times g_a + h_a alone and the whole intra encode (analysis, rounding, fixed-point
probabilities, rANS of every cell) on a frame of the bundled clip, both runtimes interleaved,
``--reps`` times each, median. Then codes ``--frames`` frames with both and counts frames with
byte-identical substreams, z symbols that differ, and y symbols that differ in frames whose z
agree (where z differs, the probabilities and so the y symbols around it change with it).
Random weights time like trained ones; ``--spread`` scales a random model's last analysis
layers so its latents use many symbols, a harsher parity check. Progress on stderr; ``--json``
prints a one-line summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from discover.sdk.assets import SAMPLE_CLIP

CLIP = SAMPLE_CLIP


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: a random model)")
    ap.add_argument("--size", default="small", choices=["tiny", "small", "paper"],
                    help="preset of the random model (default small)")
    ap.add_argument("--spread", action="store_true",
                    help="scale the random model's last layers up (latents over many symbols)")
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--height", type=int, default=576)
    ap.add_argument("--frames", type=int, default=12, help="frames for the parity count")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per runtime")
    ap.add_argument("--threads", type=int, default=1, help="threads of each runtime")
    ap.add_argument("--json", action="store_true", help="one-line JSON summary on stdout")
    return ap


def read_frames(n: int, width: int, height: int) -> list[Any]:
    """``n`` frames of the clip, every 8th, cropped (top left) to width x height, RGB."""
    import av
    import numpy as np

    out = []
    with av.open(str(CLIP)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % 8 == 0:
                img = f.to_ndarray(format="rgb24")
                if img.shape[0] < height or img.shape[1] < width:
                    raise ValueError(f"the clip is {img.shape[1]}x{img.shape[0]}, smaller than "
                                     f"{width}x{height}")
                out.append(np.ascontiguousarray(img[:height, :width]))
            if len(out) == n:
                break
    return out


def timed(fn: Any, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def symbols(model: Any, enc: dict[str, Any], rate: int) -> Any:
    """The y symbols an encode coded (from y_hat and its own probabilities)."""
    import numpy as np

    coder = model.coder()
    _, mu = coder.parameters(enc["z_sym"], rate)
    return np.rint((enc["y_hat"] - mu) / coder.step(rate)).astype(np.int64)


def run(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    import torch

    from discover.sdk.codecs.learned.checkpoint import load_pretrained
    from discover.sdk.codecs.learned.model import DiscoverCodecModel, ModelConfig, pad_to_grid
    from discover.sdk.codecs.learned.onnx_edge import OnnxAnalysis, export_edge

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        ck = load_pretrained(args.checkpoint)
        model, digest, what = ck.model, ck.hash, str(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = DiscoverCodecModel(ModelConfig.preset(args.size, steps=(1.0,))).eval()
        if args.spread:
            with torch.no_grad():
                model.g_a[-2].weight *= 30
                model.h_a[-1].weight *= 10
                model.h_s[-1].weight *= 30
        model.update(force=True)
        digest, what = None, f"random {args.size}" + (" (spread)" if args.spread else "")
    rate = model.config.rate_points // 2
    frames = read_frames(max(1, args.frames), args.width, args.height)
    xs = [pad_to_grid(torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255.0)
          for f in frames]
    with tempfile.TemporaryDirectory() as tmp:
        say(f"[bench] {what}: exporting")
        export_edge(model, Path(tmp) / "edge.onnx", checkpoint_hash=digest)
        onnx = OnnxAnalysis(Path(tmp) / "edge.onnx", device="cpu", threads=args.threads)
        x = xs[0]
        with torch.inference_mode():
            runtimes = {"torch": lambda: model.analysis(x), "onnx": lambda: onnx(x)}
            encodes = {"torch": lambda: model.compress(x, [], True, rate),
                       "onnx": lambda: model.compress(x, [], True, rate, analysis=onnx)}
            for fn in (*runtimes.values(), *encodes.values()):
                fn()  # warm up
            ana: dict[str, list[float]] = {k: [] for k in runtimes}
            enc: dict[str, list[float]] = {k: [] for k in encodes}
            say(f"[bench] timing {args.width}x{args.height}, {args.reps} runs each, "
                f"{args.threads} thread(s)")
            for _ in range(args.reps):  # interleaved: both see the same machine load
                for k in runtimes:
                    ana[k] += timed(runtimes[k], 1)
                    enc[k] += timed(encodes[k], 1)
            say(f"[bench] parity over {len(xs)} frames")
            same = y_diff = z_diff = y_total = z_total = z_frames = 0
            for xi in xs:
                a = model.compress(xi, [], True, rate)
                b = model.compress(xi, [], True, rate, analysis=onnx)
                same += a["side"] == b["side"] and a["rest"] == b["rest"]
                dz = int((a["z_sym"] != b["z_sym"]).sum())
                z_diff, z_total = z_diff + dz, z_total + a["z_sym"].size
                z_frames += dz > 0
                if not dz:  # else y symbols nearby change with the probabilities: not counted
                    y_diff += int((symbols(model, a, rate) != symbols(model, b, rate)).sum())
                    y_total += a["y_hat"].size
    med = {f"{k}_analysis_s": round(statistics.median(v), 4) for k, v in ana.items()}
    med.update({f"{k}_encode_s": round(statistics.median(v), 4) for k, v in enc.items()})
    return {"model": what, "size": [args.width, args.height], "threads": args.threads,
            "reps": args.reps, **med, "providers": onnx.providers,
            "frames": len(xs), "identical_frames": same, "frames_with_z_differing": z_frames,
            "z_symbols_differing": z_diff, "z_symbols": z_total,
            "y_symbols_differing": y_diff, "y_symbols": y_total}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from discover.sdk.errors import DiscoverError

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if min(args.width, args.height, args.reps, args.threads) < 1:
        print("error: --width, --height, --reps and --threads must be at least 1",
              file=sys.stderr)
        return 2
    try:
        out = run(args, say)
    except ImportError as e:
        print(f"error: this benchmark needs torch, compressai, onnx and onnxruntime ({e}): "
              "pip install 'discover-sdk[export]'", file=sys.stderr)
        return 2
    except (DiscoverError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    say(f"analysis (g_a + h_a), median of {args.reps}: torch {out['torch_analysis_s']:.3f} s, "
        f"ONNX Runtime {out['onnx_analysis_s']:.3f} s "
        f"({out['torch_analysis_s'] / out['onnx_analysis_s']:.2f}x)")
    say(f"whole intra encode: torch {out['torch_encode_s']:.3f} s, "
        f"ONNX Runtime {out['onnx_encode_s']:.3f} s")
    say(f"parity: {out['identical_frames']}/{out['frames']} frames byte-identical; z symbols "
        f"differing {out['z_symbols_differing']}/{out['z_symbols']} (in "
        f"{out['frames_with_z_differing']} frames); y symbols differing "
        f"{out['y_symbols_differing']}/{out['y_symbols']} (frames whose z agree)")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
