"""Reproduce ``sdk/models/weights/ssd_oid_mobilenetv2.onnx`` from the npm package.

The ``ssd-oid`` grounder's detector is the Open Images SSD MobileNetV2 that MediaPipe ships,
as an fp16 TFLite file packed together with its label map, in the npm package
``@mediapipe/objectron``. This script converts it to ONNX once, so that the product needs
neither npm nor TensorFlow at run time. Only the developer who refreshes the committed file
runs it.

Usage (from the repository root; needs ``npm`` on PATH unless --package-dir is given, and the
npm and PyPI registries; a few minutes the first time, ~2 GB of disk for the venv)::

    python tools/convert_ssd_oid.py
    python tools/convert_ssd_oid.py --package-dir /tmp/objectron/package
    python tools/convert_ssd_oid.py --work-dir /tmp/ssd-oid-convert   # kept; venv reused

What it does:

1. ``npm pack @mediapipe/objectron@<version>`` into a temporary folder and extracts it (or uses
   an already extracted package given with ``--package-dir``);
2. splits ``objectron_solution_packed_assets.data`` at the offsets its loader
   (``objectron_solution_packed_assets_loader.js``) lists: bytes 0-184 the label map
   ``object_detection_oidv4_labelmap.txt`` (24 lines, the first "???" = background), the rest
   ``object_detection_ssd_mobilenetv2_oidv4_fp16.tflite``;
3. decodes the MediaPipe graph that runs the model (``ObjectDetectionOidV4Subgraph``, serialised
   in the package's wasm) and checks that its pre/post-processing options (input size and
   range, SSD anchor options, box decoding, NMS) are the ones ``sdk/models/ssd_oid.py`` uses;
4. creates a separate throwaway virtual environment (never the project's) with pinned
   ``tensorflow-cpu``, ``tf2onnx==1.17.*`` and ``onnx``, and runs
   ``python -m tf2onnx.convert --tflite ... --opset 13`` there with the same run-time patches as
   ``tools/convert_nanodet.py`` (NumPy-2 aliases; stable node order, so the output is
   byte-identical run to run);
5. stores the weights as float16 again (the TFLite file's weights are float16, tf2onnx folds
   them to float32; each is converted back only where that is exact, with a Cast node), which
   halves the file, and records the label map and the source in the ONNX metadata;
6. checks the result against the TFLite interpreter on a synthetic image (max abs difference
   of the raw outputs), writes ``sdk/models/weights/ssd_oid_mobilenetv2.onnx`` and prints its
   size and sha256 (record them in ``sdk/models/weights/NOTICE.md``).

Converted from @mediapipe/objectron 0.4.1675468480 with tensorflow-cpu 2.21.0, tf2onnx 1.17.0,
onnx 1.17.0 (see NOTICE.md for the hash).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
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

PACKAGE = "@mediapipe/objectron"
PACKAGE_VERSION = "0.4.1675468480"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "sdk" / "models" / "weights" / "ssd_oid_mobilenetv2.onnx"
OPSET = 13
PACKED = "objectron_solution_packed_assets.data"
LOADER = "objectron_solution_packed_assets_loader.js"
LABELMAP_NAME = "object_detection_oidv4_labelmap.txt"
TFLITE_NAME = "object_detection_ssd_mobilenetv2_oidv4_fp16.tflite"
WASM = "objectron_solution_simd_wasm_bin.wasm"

# What sdk/models/ssd_oid.py assumes; step 3 checks the package's graph says the same.
EXPECTED_GRAPH = {
    "ImageToTensorCalculator": {"output_tensor_width": 300, "output_tensor_height": 300,
                                "keep_aspect_ratio": 0, "range_min": -1.0, "range_max": 1.0},
    "SsdAnchorsCalculator": {
        "input_size_width": 300, "input_size_height": 300, "min_scale": 0.2, "max_scale": 0.95,
        "anchor_offset_x": 0.5, "anchor_offset_y": 0.5, "num_layers": 6,
        "strides": [16, 32, 64, 128, 256, 512], "aspect_ratios": [1.0, 2.0, 0.5, 3.0, 0.3333],
        "reduce_boxes_in_lowest_layer": 1,
    },
    "TensorsToDetectionsCalculator": {
        "num_classes": 24, "num_boxes": 1917, "num_coords": 4, "x_scale": 10.0, "y_scale": 10.0,
        "w_scale": 5.0, "h_scale": 5.0, "ignore_classes": [0],
        "apply_exponential_on_box_size": 1, "sigmoid_score": 1, "min_score_thresh": 0.5,
    },
    "NonMaxSuppressionCalculator": {"max_num_detections": 100, "min_suppression_threshold": 0.5,
                                    "overlap_type": 3},
}  # fmt: skip
# Field numbers of the MediaPipe option protos (mediapipe/calculators/**/*.proto); only the
# fields above. ("name", "f" float / "v" varint, repeated)
_FIELDS = {
    "ImageToTensorCalculator": {1: ("output_tensor_width", "v", False),
                                2: ("output_tensor_height", "v", False),
                                3: ("keep_aspect_ratio", "v", False),
                                4: ("output_tensor_float_range", "m", False)},
    "SsdAnchorsCalculator": {1: ("input_size_width", "v", False),
                             2: ("input_size_height", "v", False),
                             3: ("min_scale", "f", False), 4: ("max_scale", "f", False),
                             5: ("anchor_offset_x", "f", False), 6: ("anchor_offset_y", "f", False),
                             7: ("num_layers", "v", False), 10: ("strides", "v", True),
                             11: ("aspect_ratios", "f", True),
                             12: ("reduce_boxes_in_lowest_layer", "v", False),
                             13: ("interpolated_scale_aspect_ratio", "f", False),
                             14: ("fixed_anchor_size", "v", False)},
    "TensorsToDetectionsCalculator": {1: ("num_classes", "v", False), 2: ("num_boxes", "v", False),
                                      3: ("num_coords", "v", False), 4: ("x_scale", "f", False),
                                      5: ("y_scale", "f", False), 6: ("w_scale", "f", False),
                                      7: ("h_scale", "f", False), 8: ("ignore_classes", "v", True),
                                      13: ("apply_exponential_on_box_size", "v", False),
                                      14: ("reverse_output_order", "v", False),
                                      15: ("sigmoid_score", "v", False),
                                      19: ("min_score_thresh", "f", False)},
    "NonMaxSuppressionCalculator": {2: ("max_num_detections", "v", False),
                                    3: ("min_suppression_threshold", "f", False),
                                    4: ("overlap_type", "v", False)},
}  # fmt: skip

# Run inside the throwaway venv: restore NumPy-1 aliases that tf2onnx 1.17 still uses, keep
# graph order where tf2onnx iterates over a set, then hand over to tf2onnx's command line.
_CONVERT_SHIM = SHIM_PATCHES + SHIM_RUN_TF2ONNX

# Run inside the throwaway venv: float32 initialisers that are exactly float16 -> float16 + Cast;
# label map and provenance into the metadata.
_FP16_SNIPPET = """
import json, sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

src, dst, meta = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = onnx.load(src)
graph = model.graph
casts, halves, kept = [], [], []
for init in graph.initializer:
    a = numpy_helper.to_array(init)
    if init.data_type == TensorProto.FLOAT and a.size >= 16:
        h = a.astype(np.float16)
        if np.array_equal(h.astype(np.float32), a):
            halves.append(numpy_helper.from_array(h, init.name + "_fp16"))
            casts.append(helper.make_node("Cast", [init.name + "_fp16"], [init.name],
                                          to=TensorProto.FLOAT, name=init.name + "_to_fp32"))
            continue
    kept.append(init)
del graph.initializer[:]
graph.initializer.extend(kept + halves)
nodes = list(graph.node)
del graph.node[:]
graph.node.extend(casts + nodes)
del model.metadata_props[:]
for k, v in meta.items():
    model.metadata_props.add(key=k, value=v)
onnx.checker.check_model(model)
onnx.save(model, dst)
print(json.dumps({"float16_initialisers": len(halves), "float32_initialisers": len(kept)}))
"""

_CHECK_SNIPPET = """
import json, sys
import numpy as np
import onnxruntime as ort
import tensorflow as tf
onnx_path, tflite_path = sys.argv[1], sys.argv[2]
# A smooth synthetic image in [-1, 1] (no test media needed here).
yy, xx = np.mgrid[0:300, 0:300].astype(np.float32) / 300
x = np.stack([np.sin(7 * xx + 3 * yy), np.cos(5 * yy - 2 * xx), np.sin(11 * xx * yy)], -1)
x = x[None].astype(np.float32)
interp = tf.lite.Interpreter(model_path=tflite_path)
interp.allocate_tensors()
interp.set_tensor(interp.get_input_details()[0]["index"], x)
interp.invoke()
ref = {o["name"]: interp.get_tensor(o["index"]) for o in interp.get_output_details()}
sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
outs = sess.run(None, {sess.get_inputs()[0].name: x})
diff = {o.name: float(np.abs(v - ref[o.name]).max()) for o, v in zip(sess.get_outputs(), outs)}
print(json.dumps({
    "inputs": [[i.name, i.shape] for i in sess.get_inputs()],
    "outputs": [[o.name, list(v.shape)] for o, v in zip(sess.get_outputs(), outs)],
    "max_abs_diff_vs_tflite": diff,
}))
"""


def fetch_package(version: str, dest: Path) -> Path:
    """Download the npm tarball with ``npm pack`` and extract it; return the package dir."""
    if shutil.which("npm") is None:
        sys.exit("error: npm not found on PATH; install Node.js/npm or pass --package-dir")
    dest.mkdir(parents=True, exist_ok=True)
    run(["npm", "pack", f"{PACKAGE}@{version}", "--silent"], cwd=dest, stdout=subprocess.DEVNULL)
    tarballs = sorted(dest.glob("mediapipe-objectron-*.tgz"))
    if not tarballs:
        sys.exit(f"error: npm pack produced no tarball in {dest}")
    with tarfile.open(tarballs[-1]) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/")]
        try:
            tar.extractall(dest, members=members, filter="data")
        except TypeError:  # Python without tarfile extraction filters
            tar.extractall(dest, members=members)
    return dest / "package"


def split_packed_assets(pkg: Path, dest: Path) -> tuple[Path, list[str]]:
    """Cut the packed assets at the loader's offsets; return the tflite path and the labels."""
    loader = (pkg / LOADER).read_text()
    match = re.search(r"loadPackage\((\{.*?\})\);", loader, re.S)
    if match is None:
        sys.exit(f"error: no loadPackage({{...}}) file table in {pkg / LOADER}")
    files = {Path(f["filename"]).name: (f["start"], f["end"])
             for f in json.loads(match.group(1))["files"]}
    if set(files) != {LABELMAP_NAME, TFLITE_NAME}:
        sys.exit(f"error: {PACKED} holds {sorted(files)}, expected {LABELMAP_NAME} and "
                 f"{TFLITE_NAME}; is this {PACKAGE}@{PACKAGE_VERSION}?")
    data = (pkg / PACKED).read_bytes()
    (s0, e0), (s1, e1) = files[LABELMAP_NAME], files[TFLITE_NAME]
    labels = data[s0:e0].decode().strip("\n").split("\n")
    tflite = data[s1:e1]
    if tflite[4:8] != b"TFL3" or e1 != len(data):
        sys.exit(f"error: bytes {s1}-{e1} of {PACKED} are not a TFLite flatbuffer")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / LABELMAP_NAME).write_bytes(data[s0:e0])
    (dest / TFLITE_NAME).write_bytes(tflite)
    print(f"split {PACKED}: {LABELMAP_NAME} bytes {s0}-{e0} ({len(labels)} labels), "
          f"{TFLITE_NAME} bytes {s1}-{e1}", flush=True)
    return dest / TFLITE_NAME, labels


# -- the MediaPipe graph inside the wasm ------------------------------------------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(buf: bytes) -> list[tuple[int, int, object]]:
    """Protobuf wire format -> [(field number, wire type, value)] (no schema needed)."""
    out, i = [], 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = struct.unpack("<f", buf[i:i + 4])[0], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((num, wire, value))
    return out


def read_graph_options(wasm: bytes) -> dict[str, dict]:
    """Options of the calculators in ``ObjectDetectionOidV4Subgraph`` (CalculatorGraphConfig
    serialised in the wasm): calculator name -> {option name: value}."""
    model = wasm.find(TFLITE_NAME.encode())
    anchor = wasm.rfind(b"\x12\x17ImageToTensorCalculator", 0, model)
    type_field = b"\xa2\x01\x1cObjectDetectionOidV4Subgraph"  # CalculatorGraphConfig.type
    end = wasm.find(type_field, model)
    if model < 0 or anchor < 0 or end < 0:
        raise ValueError("ObjectDetectionOidV4Subgraph config not found in the wasm")
    start = anchor - 3  # field 1 (node), length as a two-byte varint
    out: dict[str, dict] = {}
    for num, wire, node in _fields(wasm[start:end + len(type_field)]):
        if num != 1 or wire != 2:  # only CalculatorGraphConfig.node
            continue
        node_fields = _fields(node)
        name = next(v.decode() for n, _, v in node_fields if n == 2)  # calculator
        schema = _FIELDS.get(name)
        if schema is None:
            continue
        for n, _, opts in node_fields:  # node.options (7) -> one extension -> the options proto
            if n != 7:
                continue
            (_, _, payload), = _fields(opts)
            values: dict = {}
            for fnum, _, v in _fields(payload):
                if fnum not in schema:
                    continue
                key, kind, repeated = schema[fnum]
                if kind == "m":  # FloatRange {min = 1, max = 2}
                    r = {k: x for k, _, x in _fields(v)}
                    values["range_min"], values["range_max"] = r.get(1, 0.0), r.get(2, 0.0)
                    continue
                v = round(v, 6) if kind == "f" else v
                if repeated:
                    values.setdefault(key, []).append(v)
                else:
                    values[key] = v
            out[name] = values
    return out


def check_graph(pkg: Path) -> dict[str, dict]:
    found = read_graph_options((pkg / WASM).read_bytes())
    for calc, expected in EXPECTED_GRAPH.items():
        got = found.get(calc, {})
        bad = {k: got.get(k) for k, v in expected.items()
               if not (got.get(k) == v or (isinstance(v, float) and got.get(k) is not None
                                           and abs(got[k] - v) < 1e-5))}
        if bad:
            sys.exit(f"error: the package's graph sets {calc} {bad}, sdk/models/ssd_oid.py "
                     f"assumes {({k: expected[k] for k in bad})}; update the module first")
    print("graph options:", json.dumps(found), flush=True)
    return found


# -- conversion -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package-dir", type=Path,
                    help=f"an extracted {PACKAGE} package (skips npm pack)")
    ap.add_argument("--package-version", default=PACKAGE_VERSION,
                    help=f"npm version to fetch (default {PACKAGE_VERSION})")
    ap.add_argument("--work-dir", type=Path,
                    help="where to put the npm tarball, the split files and the throwaway venv; "
                         "kept, so the venv is reused next time (default: a temporary folder, "
                         "removed afterwards)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ssd-oid-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        pkg = args.package_dir or fetch_package(args.package_version, work / "npm")
        if not (pkg / PACKED).is_file() or not (pkg / LOADER).is_file():
            sys.exit(f"error: {pkg}/{PACKED} or {LOADER} missing; is this an extracted "
                     f"{PACKAGE} package?")
        version = json.loads((pkg / "package.json").read_text()).get("version", "?")
        print(f"source: {PACKAGE}@{version} {PACKED}", flush=True)
        tflite, labels = split_packed_assets(pkg, work / "model")
        graph = check_graph(pkg)

        python = make_converter_venv(work / "venv")
        raw_out = work / "ssd_oid_fp32.onnx"
        # Byte-reproducible: fixed hash seed, stable node order (shim), relative --tflite path.
        env = {**os.environ, "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
        run([str(python), "-c", _CONVERT_SHIM, "--tflite", tflite.name, "--opset", str(OPSET),
              "--output", str(raw_out.resolve())], cwd=tflite.parent, env=env)
        tmp_out = work / "ssd_oid_mobilenetv2.onnx"
        meta = {"labels": "\n".join(labels),
                "source": f"npm {PACKAGE}@{version} {PACKED} ({TFLITE_NAME})",
                "license": "Apache-2.0",
                "converted_by": "tools/convert_ssd_oid.py"}
        fp16 = json.loads(run([str(python), "-c", _FP16_SNIPPET, str(raw_out), str(tmp_out),
                                json.dumps(meta)], capture_output=True, text=True, env=env
                               ).stdout.strip().splitlines()[-1])
        check = json.loads(run([str(python), "-c", _CHECK_SNIPPET, str(tmp_out), str(tflite)],
                                capture_output=True, text=True, env=env
                                ).stdout.strip().splitlines()[-1])
        worst = max(check["max_abs_diff_vs_tflite"].values())
        if worst > 1e-3:
            sys.exit(f"error: the ONNX outputs differ from TFLite by up to {worst}")

        args.output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_out, args.output)
        print(json.dumps({
            "package": f"{PACKAGE}@{version}",
            "tflite_sha256": sha256_of(tflite),
            "labels": labels,
            "graph": graph,
            "converter": CONVERTER_REQUIREMENTS,
            "opset": OPSET,
            **fp16,
            "output": str(args.output),
            "bytes": args.output.stat().st_size,
            "sha256": sha256_of(args.output),
            **check,
        }))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
