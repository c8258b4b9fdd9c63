"""The edge half of the learned codec on ONNX Runtime (issue 3, edge deployment).

Only the float analysis ``x -> (y = g_a(x), z = h_a(y) - medians)`` is exported: it is the
heavy part of encoding and the only part that depends on the runtime. Everything after it
(rounding, the region masks, the fixed-point hyper decoder that yields the probabilities, rANS)
runs exactly as with torch, from the integer tables of the checkpoint, so a stream made with
either runtime decodes on any sink (see ``entropy.py``)::

    export (a machine with torch + onnx):   checkpoint --export_edge--> edge.onnx
                                             (metadata: format, version, checkpoint hash)
    edge:   frame --OnnxAnalysis (CUDA or CPU provider)--> y, z --model.compress--> substreams

The medians of z are folded into the graph as constants, so a file belongs to exactly one
checkpoint: its metadata carries the checkpoint's content hash, and :class:`OnnxAnalysis`
refuses a file made from another one.

Parity. Convolutions in torch (oneDNN) and ONNX Runtime (MLAS) sum in different orders, so y
and z differ in the last float bits (about 1e-6 relative). That changes a symbol only when a
value lies that close to a rounding boundary. Measured on the street clip (1 thread each,
discover/bench/onnx_edge.py and the unit tests): the tiny test model, 36 crops of 192x128, and a
random small model, 12 frames of 768x576, gave byte-identical substreams on every frame; a
small model with latents spread over many symbols flipped 1 of 82,944 z and 2 of 1.8 million y
symbols (3 of 12 frames differ). So identical bitstreams are the rule, not a guarantee. That
is no decoding hazard: a stream carries the edge's own symbols and decodes exactly on any sink.
ONNX Runtime has no float64 Conv on the CPU, so a float64 export is not available; its graph
optimisation levels and torch's oneDNN / deterministic switches do not remove the flips.
"""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from discover.sdk.errors import DiscoverError
from discover.sdk.models import open_session, require_onnxruntime

if TYPE_CHECKING:
    from discover.sdk.codecs.learned.model import DiscoverCodecModel

ONNX_NAME = "edge.onnx"  #: default file name, inside the checkpoint folder
EDGE_FORMAT = "discover-learned-edge"
EDGE_VERSION = 1
DEFAULT_OPSET = 17
#: the exported graph is traced on an image of this size (rows, cols); height and width stay
#: dynamic, any multiple of 64 runs
TRACE_SIZE = (128, 192)
#: CUDA provider options: no TF32 (it rounds convolution inputs to 10 mantissa bits, which
#: would flip many more roundings than the CPU runtimes do) and cuDNN's default algorithm
#: (the exhaustive search may pick a different one from run to run)
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}

Device = Literal["auto", "cpu", "cuda"]


def export_command(checkpoint: str | Path | None = None) -> str:
    """The command that makes the ONNX file of a checkpoint folder (for error messages)."""
    return f"discover export codec --checkpoint {checkpoint or 'CHECKPOINT_DIR'}"


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise DiscoverError("exporting the codec to ONNX needs the onnx package: "
                            "pip install 'discover-sdk[export]'") from None
    return onnx


def export_edge(model: DiscoverCodecModel, path: str | Path, *, opset: int = DEFAULT_OPSET,
                checkpoint_hash: str | None = None, verify: bool = True) -> dict[str, Any]:
    """Write the analysis of ``model`` (x -> y, z - medians) to ``path`` as ONNX.

    ``checkpoint_hash`` is what goes into the metadata (default: the model's content hash;
    pass the folder's hash when exporting a loaded checkpoint). With ``verify`` the file is run
    once on ONNX Runtime and compared with torch, so a broken export never reaches an edge.
    Returns a summary: file, bytes, hash, opset, seconds, max_abs_diff."""
    import torch
    from discover.sdk.codecs.learned.checkpoint import model_hash

    onnx = _require_onnx()
    t0 = time.perf_counter()
    path = Path(path)
    digest = checkpoint_hash or model_hash(model)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    sample = torch.rand((1, 3, *TRACE_SIZE), generator=torch.Generator().manual_seed(0)).to(dev)

    class Analysis(torch.nn.Module):
        def __init__(self, inner: DiscoverCodecModel) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.inner.analysis(x)

    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                Analysis(model), (sample,), buf, dynamo=False, opset_version=opset,
                input_names=["x"], output_names=["y", "z"], do_constant_folding=True,
                dynamic_axes={"x": {2: "height", 3: "width"}, "y": {2: "rows", 3: "cols"},
                              "z": {2: "hyper_rows", 3: "hyper_cols"}})
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean the same
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DiscoverError(f"torch could not export the edge analysis at ONNX opset {opset} "
                            f"({type(e).__name__}: {first}); use the default opset "
                            f"{DEFAULT_OPSET}") from None
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    c = model.config
    meta = {"format": EDGE_FORMAT, "version": str(EDGE_VERSION), "checkpoint_hash": digest,
            "latent_channels": str(c.M), "hyper_channels": str(c.N)}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "discover-sdk"
    proto.doc_string = "DISCOVER learned codec edge analysis: x -> y = g_a(x), z = h_a(y) - medians"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    diff = None
    if verify:
        diff = _verify(model, path, sample, digest)
    return {"file": str(path), "bytes": len(data), "hash": digest, "opset": opset,
            "seconds": round(time.perf_counter() - t0, 3), "max_abs_diff": diff}


def _verify(model: DiscoverCodecModel, path: Path, sample: Any, digest: str) -> float:
    """Largest |torch - ORT| over y and z on the trace image; a real mismatch is an error."""
    import torch

    with torch.no_grad():
        ref = [t.cpu().numpy() for t in model.analysis(sample)]
    got = OnnxAnalysis(path, device="cpu", threads=1, expect_hash=digest)(sample)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))
    scale = 1.0 + max(float(np.abs(a).max()) for a in ref)
    if not diff <= 1e-3 * scale:
        raise DiscoverError(f"the ONNX export {path} does not reproduce torch (max difference "
                            f"{diff:.3g}); report this with the checkpoint and the torch version")
    return diff


class OnnxAnalysis:
    """An ONNX Runtime session on an exported edge analysis, usable as ``analysis=`` of
    ``DiscoverCodecModel.compress``: takes x (1, 3, H, W) as a tensor or array, returns
    ``(y, z)`` float32 arrays.

    ``device``: ``cpu``; ``cuda`` (the CUDA provider, an error without it); ``auto`` (CUDA
    when this ONNX Runtime has it, else CPU). ``threads``: intra-op threads (default: ONNX
    Runtime's). ``expect_hash``: refuse a file exported from another checkpoint;
    ``checkpoint`` only names the folder in the fix that errors suggest."""

    def __init__(self, path: str | Path, device: Device = "auto", threads: int | None = None,
                 expect_hash: str | None = None, checkpoint: str | Path | None = None) -> None:
        self.path = Path(path)
        fix = f"`{export_command(checkpoint)}`"
        if not self.path.is_file():
            raise DiscoverError(f"learned codec edge model {self.path} not found (needed for "
                                f"codec.edge_runtime onnx); make it with {fix}, set codec.onnx "
                                f"to an existing export, or set codec.edge_runtime to torch")
        ort = require_onnxruntime()
        available = ort.get_available_providers()
        cuda = "CUDAExecutionProvider" in available
        if device == "cuda" and not cuda:
            raise DiscoverError("codec.device is cuda but this ONNX Runtime has no CUDA provider "
                                "(available: " + ", ".join(available) + "); install "
                                "onnxruntime-gpu (pip install 'discover-sdk[gpu]') or set "
                                "codec.device to auto or cpu")
        providers: list[Any] = ["CPUExecutionProvider"]
        if cuda and device in ("cuda", "auto"):
            providers.insert(0, ("CUDAExecutionProvider", dict(CUDA_OPTIONS)))
        self.session = open_session(self.path, what="learned codec edge", origin="a checkpoint",
                                    convert_command=export_command(checkpoint),
                                    threads=threads or 0, providers=providers)
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise DiscoverError("codec.device is cuda but ONNX Runtime could not start its CUDA "
                                "provider (CUDA or cuDNN libraries missing?); fix the CUDA "
                                "install or set codec.device to auto or cpu")
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.meta.get("format") != EDGE_FORMAT or "checkpoint_hash" not in self.meta:
            raise DiscoverError(f"{self.path} is not a DISCOVER learned codec edge export (no "
                                f"checkpoint hash in its metadata); re-export it with {fix}")
        if int(self.meta.get("version", "0")) > EDGE_VERSION:
            raise DiscoverError(f"{self.path} is edge export version {self.meta['version']}, "
                                f"newer than this SDK reads ({EDGE_VERSION}); update the SDK "
                                f"or re-export it with {fix}")
        self.hash: str = self.meta["checkpoint_hash"]
        if expect_hash is not None and self.hash != expect_hash:
            raise DiscoverError(f"{self.path} was exported from checkpoint {self.hash}, not from "
                                f"the loaded checkpoint {expect_hash}; re-export it with {fix}")

    @property
    def providers(self) -> list[str]:
        """The providers the session runs on, the first one doing the work."""
        return list(self.session.get_providers())

    def __call__(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(x, "detach"):  # a torch tensor, maybe on a GPU
            x = x.detach().float().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[:2] != (1, 3):
            raise ValueError(f"expected one RGB image (1, 3, H, W), got {x.shape}")
        y, z = self.session.run(["y", "z"], {"x": x})
        return y, z
