"""The package layout users and maintainers rely on: one top-level import package in the wheel,
data found inside it, no product code importing the developer scripts in tools/, and sdk never
importing edge or sink (data flows one way)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = {"discover": REPO / "discover", "discover.sdk": REPO / "sdk",
           "discover.edge": REPO / "edge", "discover.sink": REPO / "sink"}


def imported_names(folder: Path) -> list[tuple[Path, str]]:
    """Every module name an import statement in ``folder`` names (lazy imports included)."""
    found = []
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path, node.module))
    return found


def test_product_code_never_imports_tools_or_the_old_top_level_names():
    old = ("tools", "sdk", "edge", "sink")
    bad = [f"{p.relative_to(REPO)}: {name}" for folder in PRODUCT.values()
           for p, name in imported_names(folder) if name.split(".")[0] in old]
    assert bad == []


def test_sdk_never_imports_edge_or_sink():
    bad = [f"{p.relative_to(REPO)}: {name}" for p, name in imported_names(PRODUCT["discover.sdk"])
           if name.startswith(("discover.edge", "discover.sink", "discover.cli"))]
    assert bad == []


def test_shipped_data_is_found_through_the_package():
    from discover.sdk.grounders.nanodet import LABEL_MAP
    from discover.sdk.profiles import REPO_PROFILES

    assert (REPO_PROFILES / "detection.yaml").is_file()
    assert LABEL_MAP.is_file() and LABEL_MAP.name == "coco80.yaml"


@pytest.mark.slow
def test_wheel_has_one_top_level_package_with_its_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} \
        == {"discover"}
    for data in ("discover/configs/profiles/detection.yaml",
                 "discover/configs/label-maps/coco80.yaml",
                 "discover/sdk/models/weights/nanodet_coco80.onnx",
                 "discover/sdk/assets/sample/street.mp4",
                 "discover/sdk/codecs/learned/checkpoints/small/model.safetensors",
                 "discover/bench/tasks.py", "discover/train/codec.py"):
        assert data in names, data
