"""Reproduce ``sdk/models/weights/selfie_segmentation.onnx`` from the mediapipe wheel.

The product's offline person-mask model is MediaPipe's selfie segmentation (general model,
256x256 RGB input, one-channel person probability out; Apache-2.0), which PyPI's
``mediapipe==0.10.14`` ships as ``mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite``
(later releases ship no models). This script converts it to ONNX once, so the product runs it
on ONNX Runtime (its only inference runtime besides torch) and needs neither mediapipe (which
pulls jax and a second OpenCV) nor a TFLite runtime. Only the developer who refreshes the
committed file runs it.

Usage (from the repository root; needs the PyPI registry; a few minutes the first time, ~2 GB
of disk for the throwaway venv)::

    python tools/convert_person_mask.py
    python tools/convert_person_mask.py --wheel /tmp/mediapipe-0.10.14-cp311-...whl
    python tools/convert_person_mask.py --work-dir /tmp/pm-convert   # kept; venv reused

What it does:

1. ``pip download mediapipe==0.10.14 --no-deps`` (or takes ``--wheel``) and reads the .tflite
   out of the wheel (a zip; nothing is installed);
2. creates a separate throwaway virtual environment (never the project's) with pinned
   ``tensorflow-cpu``, ``tf2onnx==1.17.*``, ``onnx`` and ``onnxruntime``;
3. runs ``tf2onnx.convert --tflite ... --opset 14`` in that environment with run-time patches
   applied inside the conversion subprocess only (nothing in site-packages is edited):

   - a handler for MediaPipe's custom op ``Convolution2DTransposeBias`` (the model's last,
     2x upsampling layer), which tf2onnx does not know: inputs (input NHWC, kernel OHWI, bias),
     custom options the raw C struct ``TfLiteTransposeConvParams`` {padding, stride_w,
     stride_h} (here SAME, 2, 2). It becomes TF's ``Conv2DBackpropInput`` (kernel transposed
     to HWOI, output shape from the input shape x stride) plus an ``Add`` of the bias, which
     tf2onnx then lowers to ONNX ``ConvTranspose`` like the builtin TRANSPOSE_CONV;
   - a handler for TF's ``HardSwish`` (from TFLite HARD_SWISH; tf2onnx has none), which is
     ONNX's ``HardSwish`` (opset 14) as is;
   - the NumPy-1 aliases and the stable node order that ``tools/convert_nanodet.py`` explains
     (so the output is byte-identical run to run);

4. checks the result with ONNX Runtime: the custom layer against a NumPy reference of the
   MediaPipe kernel (kernel 2, stride 2, SAME: every input pixel becomes one 2x2 output block),
   and the whole graph on noise (outputs in [0, 1]); writes
   ``sdk/models/weights/selfie_segmentation.onnx`` and prints its size and sha256 (record them
   in ``sdk/models/weights/NOTICE.md``).

Converted from mediapipe 0.10.14 with tensorflow-cpu 2.21.0, tf2onnx 1.17.0, onnx 1.17.0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from _tf2onnx_common import (  # noqa: E402 - tools/ is on sys.path as a script
    CONVERTER_REQUIREMENTS,
    SHIM_PATCHES,
    SHIM_RUN_TF2ONNX,
    make_converter_venv,
    run,
    sha256_of,
)

WHEEL_PROJECT = "mediapipe"
WHEEL_VERSION = "0.10.14"
MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "sdk" / "models" / "weights" / "selfie_segmentation.onnx"
OPSET = 14

# Run inside the throwaway venv: patches, then tf2onnx's own command line.
_CONVERT_SHIM = SHIM_PATCHES + r'''
import struct

# The custom op's parameters are a raw C struct, not the flexbuffer tf2onnx expects: read
# them from the flatbuffer here, per output tensor.
from tf2onnx.tflite import Model as _Model
_PARAMS = {}
_path = sys.argv[sys.argv.index("--tflite") + 1]
_m = _Model.Model.GetRootAsModel(bytearray(open(_path, "rb").read()), 0)
_codes = [_m.OperatorCodes(i).CustomCode() for i in range(_m.OperatorCodesLength())]
for _gi in range(_m.SubgraphsLength()):
    _g = _m.Subgraphs(_gi)
    for _oi in range(_g.OperatorsLength()):
        _op = _g.Operators(_oi)
        if _codes[_op.OpcodeIndex()] == b"Convolution2DTransposeBias":
            _out = _g.Tensors(int(_op.OutputsAsNumpy()[0])).Name().decode()
            _PARAMS[_out] = struct.unpack("<3i", _op.CustomOptionsAsNumpy().tobytes()[:12])
print("Convolution2DTransposeBias (padding, stride_w, stride_h):", _PARAMS, file=sys.stderr)

from tf2onnx import utils
from tf2onnx.handler import tf_op, tfl_op

# TFLite HARD_SWISH becomes TF "HardSwish", which tf2onnx 1.17 has no handler for; ONNX has
# the same op (opset 14) with the same definition, x * relu6(x + 3) / 6.
@tf_op("HardSwish")
class _HardSwish:
    @classmethod
    def version_14(cls, ctx, node, **kwargs):
        node.attr.clear()

@tfl_op(["TFL_Convolution2DTransposeBias"], tf_op="Conv2DBackpropInput")
class _Convolution2DTransposeBias:
    @classmethod
    def to_tf(cls, ctx, node, **kwargs):
        inp, kernel, bias = node.input
        name = node.output[0]
        (padding, stride_w, stride_h), = [v for k, v in _PARAMS.items()
                                          if name == k or name.endswith(k)]
        utils.make_sure(padding == 1, "Convolution2DTransposeBias: only SAME padding handled")
        n, h, w, _ = ctx.get_shape(inp)
        out_channels = ctx.get_shape(kernel)[0]  # OHWI
        shape = ctx.make_const(utils.make_name("output_shape"),
                               np.array([n, h * stride_h, w * stride_w, out_channels], np.int32))
        ctx.replace_inputs(node, [shape.output[0], kernel, inp])
        transpose = ctx.insert_new_node_on_input(node, "Transpose", kernel, perm=[1, 2, 0, 3])
        transpose.skip_conversion = True
        node.attr.clear()
        node.set_attr("strides", [1, stride_h, stride_w, 1])
        node.set_attr("padding", "SAME")
        node.set_attr("data_format", "NHWC")
        add = ctx.insert_new_node_on_output("Add", name, inputs=[name, bias])
        add.skip_conversion = True
        ctx.set_dtype(add.output[0], ctx.get_dtype(name))
        ctx.set_shape(add.output[0], ctx.get_shape(name))

''' + SHIM_RUN_TF2ONNX

# The custom layer against a NumPy reference of MediaPipe's kernel, then the whole graph.
_CHECK_SNIPPET = r'''
import json, sys
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

path = sys.argv[1]
model = onnx.load(path)
inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
ct = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
assert len(ct) == 1, [n.op_type for n in ct]
ct = ct[0]
w = inits[ct.input[1]]  # ONNX ConvTranspose weight: (in, out, kh, kw)
assert w.shape[2:] == (2, 2), w.shape
# Reference: MediaPipe's Convolution2DTransposeBias with kernel 2, stride 2, SAME.
x = np.random.default_rng(0).standard_normal((1, w.shape[0], 5, 7)).astype(np.float32)
ref = np.einsum("nchw,cokl->nohkwl", x, w).reshape(1, w.shape[1], 10, 14)
sub = onnx.helper.make_model(onnx.helper.make_graph(
    [onnx.helper.make_node("ConvTranspose", ["x", "w"], ["y"],
                           **{a.name: onnx.helper.get_attribute_value(a) for a in ct.attribute})],
    "ct", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
    [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    [numpy_helper.from_array(w, "w")]), opset_imports=model.opset_import)
sub.ir_version = model.ir_version
got = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"]).run(
    None, {"x": x})[0]
assert got.shape == ref.shape and np.allclose(got, ref, atol=1e-5), float(abs(got - ref).max())
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
x = np.random.default_rng(0).random((1, 256, 256, 3)).astype(np.float32)
out = sess.run(None, {inp.name: x})
assert 0.0 <= out[0].min() and out[0].max() <= 1.0
print(json.dumps({
    "inputs": [[i.name, i.shape] for i in sess.get_inputs()],
    "outputs": [[o.name, list(v.shape)] for o, v in zip(sess.get_outputs(), out)],
    "conv_transpose_check": "ok",
}))
'''


def fetch_wheel(version: str, dest: Path) -> Path:
    """``pip download`` the mediapipe wheel (no dependencies, nothing installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
          "--no-deps", "--only-binary=:all:", "-d", str(dest), f"{WHEEL_PROJECT}=={version}"])
    wheels = sorted(dest.glob(f"{WHEEL_PROJECT}-{version}-*.whl"))
    if not wheels:
        sys.exit(f"error: pip download produced no {WHEEL_PROJECT} wheel in {dest}")
    return wheels[-1]


def extract_tflite(wheel: Path, dest: Path) -> Path:
    """Copy the selfie segmentation .tflite out of the wheel into ``dest``."""
    with zipfile.ZipFile(wheel) as z:
        if MEMBER not in z.namelist():
            sys.exit(f"error: {wheel.name} has no {MEMBER}")
        out = dest / Path(MEMBER).name
        out.write_bytes(z.read(MEMBER))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, help="an already downloaded mediapipe wheel")
    ap.add_argument("--version", default=WHEEL_VERSION,
                    help=f"mediapipe version to download (default {WHEEL_VERSION})")
    ap.add_argument("--work-dir", type=Path,
                    help="where to put the wheel and the throwaway venv; kept, so the venv is "
                         "reused next time (default: a temporary folder, removed afterwards)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="person-mask-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        wheel = args.wheel or fetch_wheel(args.version, work / "wheel")
        tflite = extract_tflite(wheel, work)
        print(f"source: {wheel.name} {MEMBER} sha256 {sha256_of(tflite)}", flush=True)
        python = make_converter_venv(work / "venv")
        tmp_out = work / "selfie_segmentation.onnx"
        env = {**os.environ, "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
        run([str(python), "-c", _CONVERT_SHIM, "--tflite", tflite.name, "--opset", str(OPSET),
              "--output", str(tmp_out.resolve())], cwd=tflite.parent, env=env)
        out = subprocess.run([str(python), "-c", _CHECK_SNIPPET, str(tmp_out)], check=True,
                             capture_output=True, text=True).stdout
        info = json.loads(out.strip().splitlines()[-1])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_out, args.output)
        print(json.dumps({
            "wheel": wheel.name, "member": MEMBER, "converter": CONVERTER_REQUIREMENTS,
            "opset": OPSET, "output": str(args.output), "bytes": args.output.stat().st_size,
            "sha256": sha256_of(args.output), **info}))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
