"""discover/bench/perceptual.py through the real torchmetrics / torchvision / torch-fidelity loaders.

The pretrained backbones cannot be had offline, so a temporary TORCH_HOME gets randomly
initialised state dicts under the exact file names the loaders look for (DESIGN.md section 5).
The scores then mean nothing in absolute terms, but their structure still shows: identical
images score ~0, a distorted copy scores higher, a missing file is a skipped metric with a note
and no network attempt.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")
pytest.importorskip("torch_fidelity")

from fake_hub_weights import HUB_FILES, write_weights  # noqa: E402

from discover.bench import perceptual  # noqa: E402
from discover.bench.perceptual import PerceptualScorer, weights_status  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _point_hub(mp: pytest.MonkeyPatch, home: Path) -> None:
    """TORCH_HOME -> home, and no torch.hub.set_dir override in the way (both restored)."""
    mp.setenv("TORCH_HOME", str(home))
    mp.setattr(torch.hub, "_hub_dir", None)


@pytest.fixture(scope="module")
def weights_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    write_weights(home / "hub" / "checkpoints")
    return home


@pytest.fixture(scope="module")
def scorer(weights_home: Path) -> Iterator[PerceptualScorer]:
    """All four metrics, loaded once for the module. FID/KID on the 768-d Inception layer: the
    2048-d default costs FID a 3 s eigen-decomposition per score on 2 cores, and the loaders and
    the metric code are the same (test_default_settings runs 2048 once)."""
    with pytest.MonkeyPatch.context() as mp:
        _point_hub(mp, weights_home)
        s = PerceptualScorer(fid_features=768)
        assert s.load() == {}
    yield s


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any download or socket connection is recorded and fails."""
    tried: list[str] = []

    def download(url: str, *a, **k) -> None:  # noqa: ANN002, ANN003
        tried.append(url)
        raise OSError(f"network disabled in tests: {url}")

    def connect(self, address) -> None:  # noqa: ANN001
        tried.append(str(address))
        raise OSError(f"network disabled in tests: {address}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return tried


# -- images -------------------------------------------------------------------------------------

def _images(n: int = 6, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Smooth random colour textures (BGR uint8)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = cv2.GaussianBlur(rng.random((size, size, 3), dtype=np.float32), (0, 0), 2)
        out.append(cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8))
    return out


def _noisy(images: list[np.ndarray], sigma: float = 25.0) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [np.clip(i + rng.normal(0, sigma, i.shape), 0, 255).astype(np.uint8) for i in images]


def _blurred(images: list[np.ndarray]) -> list[np.ndarray]:
    return [cv2.GaussianBlur(i, (0, 0), 3) for i in images]


# -- status -------------------------------------------------------------------------------------

def test_import_is_cheap() -> None:
    code = "import sys, discover.bench.perceptual; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_status_absent_then_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _point_hub(monkeypatch, tmp_path)
    checkpoints = tmp_path / "hub" / "checkpoints"
    before = weights_status()
    assert set(before) == {"fid", "kid", "lpips", "dists"}
    for metric, st in before.items():
        assert not st["available"], metric
        hub = [f for f in st["files"] if f["source"].startswith("http")]
        assert hub and all(not f["present"] for f in hub)
        assert all(Path(f["path"]).parent == checkpoints for f in hub)  # TORCH_HOME respected
        assert "--fetch" in st["note"] and hub[0]["file"] in st["note"]
        # the LPIPS linear layers and DISTS alpha/beta ship inside torchmetrics
        assert all(f["present"] for f in st["files"] if not f["source"].startswith("http"))
    assert {f["file"] for st in before.values() for f in st["files"]} >= set(HUB_FILES)

    write_weights(checkpoints)
    after = weights_status()
    assert all(st["available"] and st["note"] is None for st in after.values())
    assert all(f["present"] and f["note"] is None for st in after.values() for f in st["files"])


# -- scores -------------------------------------------------------------------------------------

def test_identical_vs_distorted(scorer: PerceptualScorer) -> None:
    imgs = _images()
    same = scorer.score(imgs, [i.copy() for i in imgs])
    noisy = scorer.score(imgs, _noisy(imgs))
    assert same["notes"] == {} and noisy["notes"] == {}
    assert same["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert same["dists"] == pytest.approx(0.0, abs=1e-5)
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)
    # KID's unbiased estimator treats the two sets as independent samples: against itself it
    # is slightly negative, not 0; still far below a distorted set
    assert abs(same["kid"]) < 0.05 * noisy["kid"]
    for m in ("lpips", "dists", "fid", "kid"):
        assert noisy[m] > same[m] + 1e-3 * abs(noisy[m]), m
        assert noisy[m] > 0, m


def test_default_settings(weights_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's configuration: 2048-d Inception pool features, the full network."""
    _point_hub(monkeypatch, weights_home)
    s = PerceptualScorer(metrics=("fid", "kid"))
    imgs = _images(4)
    res = s.score(imgs, _noisy(imgs))
    assert s._ref_feats.shape == (4, 2048)
    assert res["fid"] > 0 and res["kid"] > 0 and res["lpips"] is None


def test_blur_and_noise_per_pair(scorer: PerceptualScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scorer, "metrics", ("lpips", "dists"))
    monkeypatch.setattr(scorer, "_fid", None)
    monkeypatch.setattr(scorer, "_kid", None)
    imgs = _images()
    blur = scorer.score(imgs, _blurred(imgs))
    weak = scorer.score(imgs, _noisy(imgs, 5.0))
    strong = scorer.score(imgs, _noisy(imgs, 40.0))
    assert blur["fid"] is None and blur["notes"]["fid"] == "not requested"
    for m in ("lpips", "dists"):
        assert blur[m] > 1e-3, m
        assert strong[m] > weak[m] > 1e-4, m  # grows with the distortion


def test_every_and_max_side(scorer: PerceptualScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scorer, "_fid", None)
    monkeypatch.setattr(scorer, "_kid", None)
    imgs, noisy = _images(5), _noisy(_images(5))
    full = scorer.score(imgs[::2], noisy[::2])
    monkeypatch.setattr(scorer, "every", 2)
    sub = scorer.score(imgs, noisy)  # pairs 0, 2, 4
    for m in ("lpips", "dists"):
        assert sub[m] == pytest.approx(full[m], rel=1e-5), m
    monkeypatch.setattr(scorer, "max_side", 32)
    small = scorer.score(imgs, noisy)
    assert small["lpips"] != pytest.approx(sub["lpips"], rel=1e-3)  # scored on 32x32 copies


def test_kid_small_sets_cache_and_determinism(weights_home: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _point_hub(monkeypatch, weights_home)
    s = PerceptualScorer(metrics=("fid", "kid"), fid_features=64, kid_subset_size=4)
    imgs, other = _images(6), _images(6, seed=5)
    first = s.score(imgs, _noisy(imgs))
    assert s._kid.subset_size == 4 and s._kid.subsets == 100  # 4 of 6: sampled, seeded
    s.score(other, _noisy(other))  # other originals replace the cached reference features
    again = s.score(imgs, _noisy(imgs))
    assert again["fid"] == pytest.approx(first["fid"], rel=1e-6)
    assert again["kid"] == pytest.approx(first["kid"], rel=1e-6)
    three = s.score(imgs[:3], _noisy(imgs)[:3])  # subset size adapts to 3 frames
    assert s._kid.subset_size == 3 and s._kid.subsets == 1
    assert three["kid"] is not None and three["fid"] is not None
    one = s.score(imgs[:1], imgs[:1])
    assert one["fid"] is None and one["kid"] is None and "2 frames" in one["notes"]["kid"]


def test_missing_weights_skip_without_network(tmp_path: Path, weights_home: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              no_network: list[str]) -> None:
    _point_hub(monkeypatch, tmp_path)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    os.symlink(weights_home / "hub" / "checkpoints" / HUB_FILES[1], checkpoints / HUB_FILES[1])
    s = PerceptualScorer()
    imgs = _images(3)
    res = s.score(imgs, _noisy(imgs))
    assert no_network == []
    assert res["lpips"] is not None and res["lpips"] > 0  # its alexnet file is there
    for metric, missing in (("fid", HUB_FILES[0]), ("kid", HUB_FILES[0]), ("dists", HUB_FILES[2])):
        assert res[metric] is None
        assert missing in res["notes"][metric] and "--fetch" in res["notes"][metric]
    assert "lpips" not in res["notes"]


def test_unreadable_weights_file_is_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           no_network: list[str]) -> None:
    _point_hub(monkeypatch, tmp_path)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / HUB_FILES[2]).write_bytes(b"not a checkpoint")
    s = PerceptualScorer(metrics=("dists",))
    res = s.score(_images(2), _images(2))
    assert res["dists"] is None and "loading" in res["notes"]["dists"]
    assert no_network == []


def test_bad_input() -> None:
    s = PerceptualScorer(metrics=("lpips",))
    imgs = _images(2)
    with pytest.raises(ValueError, match="originals"):
        s.score(imgs, imgs[:1])
    with pytest.raises(ValueError, match="uint8"):
        s.score(imgs, [i.astype(np.float32) for i in imgs])
    with pytest.raises(ValueError, match="differs"):
        s.score(imgs, [cv2.resize(i, (32, 32)) for i in imgs])
    with pytest.raises(ValueError, match="unknown metric"):
        PerceptualScorer(metrics=("psnr",))


# -- command line -------------------------------------------------------------------------------

def test_cli_status_and_fetch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str],
                                    no_network: list[str]) -> None:
    _point_hub(monkeypatch, tmp_path)
    assert perceptual.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("MISSING") == 4 and "--fetch" in out
    assert perceptual.main(["--fetch"]) == 2  # the real loaders try to download, and fail
    err = capsys.readouterr().err
    assert no_network and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: fetching the fid/kid weights into") and "network disabled" in last


def test_cli_fetch_with_everything_present(weights_home: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           no_network: list[str]) -> None:
    _point_hub(monkeypatch, weights_home)
    assert perceptual.main(["--fetch", "--json"]) == 0
    assert no_network == []
    assert '"available": true' in capsys.readouterr().out
