"""Export the edge half of a learned codec checkpoint (g_a, h_a) to ONNX for ONNX Runtime.

    discover export codec --checkpoint sdk/codecs/learned/checkpoints/small
    discover export codec --checkpoint /tmp/ck/tiny --out /tmp/edge.onnx --json

The file carries the checkpoint's content hash; an edge with ``codec.edge_runtime: onnx`` loads
the same checkpoint (for its coding tables) and refuses an export of another one. Needs torch,
compressai and onnx (pip install 'discover-sdk[export]'); the edge needs only onnxruntime for
the analysis. Progress goes to stderr; ``--json`` prints a one-line summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from discover.sdk.codecs.learned.onnx_edge import DEFAULT_OPSET, ONNX_NAME

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True,
                    help="checkpoint folder (config.json + weights)")
    ap.add_argument("--out", type=Path,
                    help=f"ONNX file to write (default: CHECKPOINT/{ONNX_NAME})")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                    help=f"ONNX opset (default {DEFAULT_OPSET})")
    ap.add_argument("--json", action="store_true", help="one-line JSON summary on stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from discover.sdk.errors import DiscoverError

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        from discover.sdk.codecs.learned.checkpoint import load_pretrained
        from discover.sdk.codecs.learned.onnx_edge import ONNX_NAME, export_edge
    except ImportError as e:
        print(f"error: exporting the codec needs torch and compressai ({e}): "
              "pip install 'discover-sdk[export]'", file=sys.stderr)
        return 2
    out = args.out or args.checkpoint / ONNX_NAME
    if not 7 <= args.opset <= 20:
        print(f"error: --opset {args.opset} is not supported; use 7..20 (default 17)",
              file=sys.stderr)
        return 2
    try:
        say(f"[export] loading {args.checkpoint}")
        ck = load_pretrained(args.checkpoint, device="cpu")
        say(f"[export] checkpoint {ck.hash}: tracing g_a, h_a (opset {args.opset})")
        summary = export_edge(ck.model, out, opset=args.opset, checkpoint_hash=ck.hash)
    except DiscoverError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"error: cannot write {out} ({e.strerror or e}); choose a writable --out",
              file=sys.stderr)
        return 2
    say(f"[export] wrote {summary['file']} ({summary['bytes'] / 1e6:.2f} MB) in "
        f"{summary['seconds']:.1f} s; ONNX Runtime matches torch to {summary['max_abs_diff']:.2g}")
    if args.json:
        print(json.dumps({"file": summary["file"], "size": summary["bytes"],
                          "hash": summary["hash"], "seconds": summary["seconds"],
                          "opset": summary["opset"],
                          "max_abs_diff": summary["max_abs_diff"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
