"""What the model converters share: a throwaway venv with TensorFlow + tf2onnx, the run-time
patches tf2onnx 1.17 needs (NumPy-1 aliases; graph order where it iterates over a set, so the
output is byte-identical run to run), and small helpers. Imported by tools/convert_*.py when
they run as scripts (their folder is then on sys.path)."""

from __future__ import annotations

import hashlib
import subprocess
import venv
from pathlib import Path

CONVERTER_REQUIREMENTS = ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.*", "onnx==1.17.0"]
CHECK_REQUIREMENTS = ["onnxruntime"]  # to check the result in the same venv

#: first part of a converter shim run inside the venv (``python -c``)
SHIM_PATCHES = """
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
"""

#: last part of a converter shim: hand over to tf2onnx's own command line
SHIM_RUN_TF2ONNX = """
sys.argv = ["tf2onnx.convert"] + sys.argv[1:]
runpy.run_module("tf2onnx.convert", run_name="__main__", alter_sys=True)
"""


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run and echo a command (inline scripts shown as a placeholder); raise on failure."""
    shown = ["<inline script>" if "\n" in str(c) else str(c) for c in cmd]
    print("+", " ".join(shown), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def make_converter_venv(venv_dir: Path, requirements: list[str] | None = None) -> Path:
    """Create (or reuse) the throwaway venv with TensorFlow and tf2onnx; return its python."""
    reqs = requirements or CONVERTER_REQUIREMENTS + CHECK_REQUIREMENTS
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / ".converter-ready"
    wanted = "\n".join(reqs)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs])
    stamp.write_text(wanted)
    return python


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
