"""Perceptual scores for the task benchmark: FID, KID, LPIPS (alex) and DISTS.

Every metric is the real one from torchmetrics, never a reimplementation:

* ``fid`` / ``kid``: ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` over the 2048-d
  pool features of torch-fidelity's InceptionV3 (the TF-ported FID network), loaded once by
  torchmetrics' ``NoTrainInceptionV3`` (the class both metrics build). The features of a frame
  are computed once and fed to both metrics (through an identity feature module), and the
  reference (original) features are kept between calls while the originals do not change.
* ``lpips``: ``LearnedPerceptualImagePatchSimilarity(net_type="alex")``, mean over frames.
* ``dists``: torchmetrics' ``DISTSNetwork`` (the network ``DeepImageStructureAndTextureSimilarity``
  builds), built once: that metric class rebuilds the network -- a VGG16 load -- on every
  ``update``, which is unusable for 30 settings. Mean over frames.

Pretrained backbones are not shipped by any package: torchvision and torch-fidelity fetch them
into the torch hub cache (``torch.hub.get_dir()/checkpoints``, moved by ``TORCH_HOME``). This
module never downloads on its own: it checks the files first and reports a metric whose file is
missing as skipped (``None`` plus a note). ``python -m discover.bench.perceptual --fetch`` fills the cache
where there is internet; ``python -m discover.bench.perceptual`` prints what is there. The LPIPS linear
layers and the DISTS alpha/beta ship inside torchmetrics.

torch, torchvision and torchmetrics are imported inside functions: importing this module is
cheap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

METRICS: tuple[str, ...] = ("fid", "kid", "lpips", "dists")
FETCH_HINT = "python -m discover.bench.perceptual --fetch"
#: how to install the metric packages (the ``metrics`` extra of pyproject.toml)
PACKAGES = "-c constraints.txt -e '.[metrics]'"


class PerceptualError(Exception):
    """A failure the command line reports as one line (exit status 2)."""


# -- which files each metric needs ----------------------------------------------------------------

def _url_file(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def _hub_checkpoints() -> Path:
    """The folder torch.hub.load_state_dict_from_url reads and fills (respects TORCH_HOME)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _needed_files(metric: str) -> list[dict[str, Any]]:
    """The weight files ``metric`` needs: name, path, where it comes from.

    Names come from the loaders' own URLs, so they follow the installed versions. Raises
    ImportError when the metric's packages are missing.
    """
    if metric in ("fid", "kid"):
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        return [{"url": URL_INCEPTION_V3, "path": _hub_checkpoints() / _url_file(URL_INCEPTION_V3)}]
    if metric == "lpips":
        import torchmetrics.functional.image.lpips as tm_lpips
        from torchvision.models import AlexNet_Weights

        url = AlexNet_Weights.DEFAULT.url
        return [{"url": url, "path": _hub_checkpoints() / _url_file(url)},
                {"url": None, "path": Path(tm_lpips.__file__).parent / "lpips_models" / "alex.pth"}]
    if metric == "dists":
        import torchmetrics.functional.image.dists as tm_dists
        from torchvision.models import VGG16_Weights

        url = VGG16_Weights.DEFAULT.url
        return [{"url": url, "path": _hub_checkpoints() / _url_file(url)},
                {"url": None, "path": Path(tm_dists.__file__).parent / "dists_models" / "weights.pt"}]
    raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def _file_note(name: str, path: Path, url: str | None) -> str:
    if url is None:
        return (f"{name} is missing from the torchmetrics install ({path}): "
                f"reinstall it (pip install --force-reinstall {PACKAGES})")
    return (f"{name} is missing: run `{FETCH_HINT}` on a machine with internet and copy "
            f"{path.parent} over, or download {url} to {path}")


def weights_status(metrics: Sequence[str] = METRICS) -> dict[str, dict[str, Any]]:
    """Per metric: ``available``, ``files`` (``file``, ``path``, ``present``, ``source``,
    ``note``) and ``note`` (the notes of the missing files, None when all are present).

    Reads the hub cache location at call time, so a changed ``TORCH_HOME`` is seen.
    """
    status: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        try:
            needed = _needed_files(metric)
        except ImportError as exc:
            note = f"{metric} needs torchmetrics and torch-fidelity ({exc}): pip install {PACKAGES}"
            status[metric] = {"available": False, "files": [], "note": note}
            continue
        files = []
        for need in needed:
            path: Path = need["path"]
            present = path.is_file()
            files.append({
                "file": path.name, "path": str(path), "present": present,
                "source": need["url"] or "ships with torchmetrics",
                "note": None if present else _file_note(path.name, path, need["url"]),
            })
        notes = [f["note"] for f in files if f["note"]]
        status[metric] = {"available": not notes, "files": files,
                          "note": "; ".join(notes) if notes else None}
    return status


# -- images -------------------------------------------------------------------------------------

def _check_frames(originals: Sequence[np.ndarray], decoded: Sequence[np.ndarray]) -> None:
    if len(originals) != len(decoded):
        raise ValueError(f"{len(originals)} originals but {len(decoded)} decoded frames")
    if not originals:
        raise ValueError("no frames to score")
    for i, (a, b) in enumerate(zip(originals, decoded, strict=True)):
        for what, img in (("original", a), ("decoded", b)):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"{what} frame {i}: expected HxWx3 uint8 BGR, "
                                 f"got {img.dtype} {img.shape}")
        if a.shape != b.shape:
            raise ValueError(f"frame {i}: decoded {b.shape[:2]} differs from original "
                             f"{a.shape[:2]}; resize the decoded frame first")


def _fit(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink so the longer side is at most ``max_side`` (area interpolation, aspect kept)."""
    h, w = img.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return img
    import cv2

    s = max_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA)


def _batches(images: Sequence[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Runs of at most ``size`` consecutive images of one shape (so they stack)."""
    run: list[np.ndarray] = []
    for img in images:
        if run and (len(run) == size or img.shape != run[0].shape):
            yield run
            run = []
        run.append(img)
    if run:
        yield run


def _to_tensor(images: Sequence[np.ndarray], device: str, unit: bool) -> Any:
    """BGR uint8 HxWx3 list -> RGB NCHW tensor: uint8 0..255, or float 0..1 when ``unit``."""
    import torch

    rgb = np.ascontiguousarray(np.stack(images)[..., ::-1].transpose(0, 3, 1, 2))
    t = torch.from_numpy(rgb).to(device)
    return t.float().div_(255.0) if unit else t


def _fingerprint(images: Sequence[np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for img in images:
        h.update(repr(img.shape).encode())
        h.update(np.ascontiguousarray(img).data)
    return h.hexdigest()


# -- the scorer ---------------------------------------------------------------------------------

class PerceptualScorer:
    """FID, KID, LPIPS and DISTS of decoded frames against their originals.

    Models load once (first ``load()`` or ``score()``) and serve every later call; a metric
    whose weights are missing is skipped with a note, never downloaded.

    FID and KID compare the *distribution* of the decoded frames (test) with that of the
    originals (reference). On the tens of frames a benchmark has, both are biased and noisy
    (FID strongly: 2048-d covariances from a few dozen samples; KID's estimator is unbiased,
    so less, and it can be slightly negative when the sets are indistinguishable). Read them as
    comparisons between settings scored on the same frames, not as absolute figures comparable
    with published ones. They use every frame (``every`` does not apply): each sample counts.
    FID's ``compute`` takes the eigenvalues of a 2048 x 2048 float64 matrix: about 3 s per
    call on a 2-core CPU at tens of frames (12 s once the covariances are full rank);
    ``fid_features`` picks a smaller Inception layer (64, 192, 768) where that matters.

    LPIPS and DISTS are per frame pair, averaged. Their cost grows with the pixel count (DISTS
    runs VGG16 on both images: 2.9 s per 768x576 pair on a 2-core CPU, 0.25 s at 256 px; LPIPS
    0.12 s / 0.01 s), so by default both images are shrunk to ``max_side`` = 256 on the longer
    side (DISTS' reference code shrinks the shorter side to 256; ``None`` keeps full size) and
    ``every`` = k scores every k-th pair only. Images are BGR uint8 as OpenCV gives them; they
    are converted to RGB.

    Args:
        metrics: which of ``fid``, ``kid``, ``lpips``, ``dists`` to compute.
        device: torch device for the networks (``cpu``, ``cuda``...).
        every: LPIPS/DISTS score pairs 0, k, 2k... (1 = all).
        max_side: LPIPS/DISTS longer-side limit in pixels, None for full size.
        fid_features: Inception feature size for FID and KID (2048 is the standard).
        kid_subset_size: KID subset size upper bound; the size used is min(this, frames), and
            when that covers all frames one exact subset is computed instead of 100 random ones.
        batch_size: frames per forward pass.
        seed: seeds KID's subset sampling, so repeated calls give the same value.
    """

    def __init__(self, metrics: Sequence[str] = METRICS, device: str = "cpu", every: int = 1,
                 max_side: int | None = 256, fid_features: int = 2048,
                 kid_subset_size: int = 1000, batch_size: int = 8, seed: int = 0) -> None:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
        if every < 1 or batch_size < 1 or kid_subset_size < 2:
            raise ValueError("every and batch_size must be >= 1, kid_subset_size >= 2")
        if max_side is not None and max_side < 32:
            raise ValueError("max_side must be None or >= 32")
        if fid_features not in (64, 192, 768, 2048):
            raise ValueError("fid_features must be one of 64, 192, 768, 2048")
        self.metrics = tuple(dict.fromkeys(metrics))
        self.device = device
        self.every = every
        self.max_side = max_side
        self.fid_features = fid_features
        self.kid_subset_size = kid_subset_size
        self.batch_size = batch_size
        self.seed = seed
        self.notes: dict[str, str] = {}  # metric -> why it is skipped
        self._loaded = False
        self._inception: Any = None
        self._fid: Any = None
        self._kid: Any = None
        self._lpips: Any = None
        self._dists: Any = None
        self._ref_key: str | None = None
        self._ref_feats: Any = None

    # loading

    def load(self) -> dict[str, str]:
        """Load the available models (once); return {metric: note} for the skipped ones."""
        if self._loaded:
            return dict(self.notes)
        status = weights_status(self.metrics)
        usable = [m for m in self.metrics if status[m]["available"]]
        self.notes.update({m: status[m]["note"] for m in self.metrics if m not in usable})
        loaders = {"inception": self._load_inception, "lpips": self._load_lpips,
                   "dists": self._load_dists}
        wanted = {"inception": [m for m in usable if m in ("fid", "kid")],
                  "lpips": [m for m in usable if m == "lpips"],
                  "dists": [m for m in usable if m == "dists"]}
        for part, needs in wanted.items():
            if not needs:
                continue
            try:
                loaders[part]()
            except Exception as exc:  # a present but unreadable/mismatched file
                paths = ", ".join(f["path"] for m in needs for f in status[m]["files"])
                for m in needs:
                    self.notes[m] = (f"loading {paths} failed ({type(exc).__name__}: {exc}); "
                                     f"replace the file(s): {FETCH_HINT}")
        self._loaded = True
        return dict(self.notes)

    def _load_inception(self) -> None:
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
        from torchmetrics.image.kid import KernelInceptionDistance

        path = _needed_files("fid")[0]["path"]
        # the same construction FrechetInceptionDistance(feature=N, feature_extractor_weights_path)
        # does; the path is given, so torch-fidelity never reaches for the network
        self._inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[str(self.fid_features)],
            feature_extractor_weights_path=str(path)).to(self.device)

        dim = self.fid_features

        class _Features(torch.nn.Module):
            """Identity: the metrics receive features already computed by the Inception."""

            num_features = dim

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x

        if "fid" in self.metrics:
            self._fid = FrechetInceptionDistance(feature=_Features()).to(self.device)
        if "kid" in self.metrics:
            with warnings.catch_warnings():  # "saves all features": tens of frames here
                warnings.simplefilter("ignore", UserWarning)
                self._kid = KernelInceptionDistance(
                    feature=_Features(), subset_size=self.kid_subset_size).to(self.device)

    def _load_lpips(self) -> None:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self._lpips = LearnedPerceptualImagePatchSimilarity(
            net_type="alex", reduction="none", normalize=True).to(self.device)

    def _load_dists(self) -> None:
        from torchmetrics.functional.image.dists import DISTSNetwork

        self._dists = DISTSNetwork().to(self.device).eval()

    # scoring

    def score(self, originals: Sequence[np.ndarray],
              decoded: Sequence[np.ndarray]) -> dict[str, Any]:
        """Scores of ``decoded`` against ``originals`` (same length, pairwise same size).

        Returns ``fid``, ``kid`` (the KID mean), ``lpips``, ``dists`` as floats (lower is
        closer for all four) or None, and ``notes`` {metric: why it is None}.
        """
        _check_frames(originals, decoded)
        self.load()
        import torch

        out: dict[str, Any] = dict.fromkeys(METRICS)
        notes = {m: "not requested" for m in METRICS if m not in self.metrics}
        notes.update(self.notes)
        with torch.no_grad():
            if self._fid is not None or self._kid is not None:
                if len(originals) < 2:
                    for m in ("fid", "kid"):
                        if m in self.metrics and m not in notes:
                            notes[m] = "FID and KID need at least 2 frames"
                else:
                    out.update(self._score_distribution(originals, decoded))
            pairs = list(range(0, len(originals), self.every))
            if self._lpips is not None:
                out["lpips"] = self._score_pairs(originals, decoded, pairs, self._lpips_batch)
            if self._dists is not None:
                out["dists"] = self._score_pairs(originals, decoded, pairs, self._dists_batch)
        out["notes"] = notes
        return out

    def _features(self, images: Sequence[np.ndarray]) -> Any:
        import torch

        feats = [self._inception(_to_tensor(run, self.device, unit=False))
                 for run in _batches(images, self.batch_size)]
        return torch.cat(feats)

    def _score_distribution(self, originals: Sequence[np.ndarray],
                            decoded: Sequence[np.ndarray]) -> dict[str, float]:
        import torch

        key = _fingerprint(originals)
        if key != self._ref_key:  # reference features are reused while the originals repeat
            self._ref_feats, self._ref_key = self._features(originals), key
        test = self._features(decoded)
        res: dict[str, float] = {}
        if self._fid is not None:
            self._fid.reset()
            self._fid.update(self._ref_feats, real=True)
            self._fid.update(test, real=False)
            res["fid"] = float(self._fid.compute())
        if self._kid is not None:
            n = min(len(originals), len(decoded))
            self._kid.subset_size = min(self.kid_subset_size, n)
            self._kid.subsets = 1 if self._kid.subset_size == n else 100
            self._kid.reset()
            self._kid.update(self._ref_feats, real=True)
            self._kid.update(test, real=False)
            with torch.random.fork_rng(devices=[]):  # randperm runs on the CPU generator
                torch.default_generator.manual_seed(self.seed)
                kid_mean, _ = self._kid.compute()
            res["kid"] = float(kid_mean)
        return res

    def _score_pairs(self, originals: Sequence[np.ndarray], decoded: Sequence[np.ndarray],
                     pairs: list[int], batch_fn: Any) -> float:
        import torch

        orig = [_fit(originals[i], self.max_side) for i in pairs]
        dec = [_fit(decoded[i], self.max_side) for i in pairs]
        scores = []
        start = 0
        for run in _batches(orig, self.batch_size):
            end = start + len(run)
            a = _to_tensor(run, self.device, unit=True)
            b = _to_tensor(dec[start:end], self.device, unit=True)
            scores.append(batch_fn(b, a).reshape(-1).float().cpu())
            start = end
        return float(torch.cat(scores).mean())

    def _lpips_batch(self, test: Any, ref: Any) -> Any:
        self._lpips.reset()
        self._lpips.update(test, ref)
        return self._lpips.compute()  # one score per pair (reduction "none")

    def _dists_batch(self, test: Any, ref: Any) -> Any:
        return self._dists(test, ref)


# -- command line -------------------------------------------------------------------------------

def fetch(metrics: Sequence[str] = METRICS) -> None:
    """Fill the hub cache by calling the real loaders with downloads allowed (needs internet).

    Metrics whose files are all present are not loaded again.
    """
    status = weights_status(metrics)
    missing = [m for m in metrics if not status[m]["available"]]

    def inception() -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        FrechetInceptionDistance(feature=2048)  # torch-fidelity downloads into the hub cache

    def lpips() -> None:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        LearnedPerceptualImagePatchSimilarity(net_type="alex")

    def dists() -> None:
        from torchmetrics.functional.image.dists import DISTSNetwork

        DISTSNetwork()

    steps = [("fid/kid", {"fid", "kid"}, inception), ("lpips", {"lpips"}, lpips),
             ("dists", {"dists"}, dists)]
    for what, covers, load in steps:
        if not covers & set(missing):
            continue
        try:
            load()
        except ImportError as exc:
            raise PerceptualError(f"{exc}: pip install {PACKAGES}") from exc
        except Exception as exc:  # network, disk, hash mismatch
            raise PerceptualError(f"fetching the {what} weights into {_hub_checkpoints()} "
                                  f"failed: {type(exc).__name__}: {exc}") from exc


def format_status(status: dict[str, dict[str, Any]]) -> str:
    """The status as a plain table, then the notes of the missing files."""
    rows = [("metric", "file", "state", "path")]
    notes = []
    for metric, st in status.items():
        if not st["files"]:
            rows.append((metric, "-", "unavailable", "-"))
        for f in st["files"]:
            rows.append((metric, f["file"], "present" if f["present"] else "MISSING", f["path"]))
        if st["note"]:
            notes.append(f"{metric}: {st['note']}")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
             for r in rows]
    return "\n".join(lines + notes)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m discover.bench.perceptual [--fetch] [--json]``: status of (or fetch) the weights."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see discover)
    parser = argparse.ArgumentParser(prog="python -m discover.bench.perceptual", description=(
        "Weights of the perceptual metrics (FID, KID, LPIPS, DISTS) in the torch hub cache "
        "(TORCH_HOME moves it)."))
    parser.add_argument("--fetch", action="store_true",
                        help="download the missing weights through the real loaders (internet)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    args = parser.parse_args(argv)
    try:
        if args.fetch:
            fetch()
        status = weights_status()
    except PerceptualError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    if args.fetch and not all(st["available"] for st in status.values()):
        print("error: some weights are still missing after --fetch (see above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
