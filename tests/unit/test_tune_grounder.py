"""tools/tune_grounder.py: thresholds are chosen on development frames only, don't-care regions
apply only to the frames they were checked on, and a run reaching held-out frames names no
choice. Runs the real tool (real NanoDet reference, real grounder, real classical codec) on two
frames of the bundled clip."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CLIP = REPO / "sdk" / "assets" / "sample" / "street.mp4"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("tune_grounder", REPO / "tools" / "tune_grounder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dont_care_regions_apply_only_where_checked(tool):
    box = (24, 105, 56, 148)
    ignore = [(500, 795, box)]
    assert tool.ignore_at(499, ignore) == []
    assert tool.ignore_at(500, ignore) == [box]
    assert tool.ignore_at(795, ignore) == []
    assert tool.parse_ignore("none") == []
    assert tool.parse_ignore("auto") == list(tool.IGNORE_REGIONS)
    assert tool.parse_ignore("1,2,3,4") == [(0, tool.sys.maxsize, (1.0, 2.0, 3.0, 4.0))]
    refs = np.array([[30, 110, 50, 140], [300, 110, 350, 140]], np.float32)
    assert tool.ignored(refs, tool.ignore_at(600, ignore)).tolist() == [True, False]
    assert tool.ignored(refs, tool.ignore_at(100, ignore)).tolist() == [False, False]


def test_bad_ignore_is_one_error_line(tool):
    with pytest.raises(SystemExit, match="--ignore wants"):
        tool.parse_ignore("1,2,x")
    with pytest.raises(SystemExit, match="--ignore wants"):
        tool.parse_ignore("1,2,3")


def test_choose_fewest_bits_reaching_target(tool):
    rows = [{"threshold": 0.1, "recall": 0.97, "task_bpp": 0.8},
            {"threshold": 0.2, "recall": 0.95, "task_bpp": 0.4},
            {"threshold": 0.3, "recall": 0.93, "task_bpp": 0.2}]
    assert tool.choose(rows, 0.95) == (rows[1], True)
    # none reaches 0.99: the fewest bits within 0.01 of the best recall (0.97)
    rows.insert(1, {"threshold": 0.15, "recall": 0.961, "task_bpp": 0.6})
    assert tool.choose(rows, 0.99) == (rows[1], False)


def test_defaults_are_the_development_split(tool):
    assert (tool.DEV_START, tool.DEV_STOP) == (0, 500)
    assert tool.EVAL_START == tool.DEV_STOP


def _run(tool, tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "r.json"
    code = tool.main(["--video", str(CLIP), "--grounders", "nanodet", "--no-timing",
                      "--reference-cache", str(tmp_path / "ref.json"), "--json", str(out),
                      "--threads", "1", *argv])
    assert code == 0
    return json.loads(out.read_text())


def test_development_run_chooses_and_held_out_run_does_not(tool, tmp_path):
    dev = _run(tool, tmp_path, "--stop", "2", "--thresholds", "0.1,0.6")
    assert dev["split"] == "development"
    rows = dev["grounders"]["nanodet"]["rows"]
    assert [r["threshold"] for r in rows] == [0.1, 0.6]
    assert rows[0]["recall_hand_checked"] is None  # hand-checked objects are evaluation frames
    assert rows[0]["boxes_per_frame"] >= rows[1]["boxes_per_frame"]
    assert rows[0]["task_bpp"] > 0
    # a run that reaches frame 500 reports, it never chooses (the clip ends before 500)
    held = _run(tool, tmp_path, "--stop", "501", "--step", "500", "--thresholds", "default")
    assert held["split"].startswith("evaluation")
    assert held["grounders"]["nanodet"]["choice"] is None
    from discover.sdk.grounders.nanodet import NanoDetConfig
    default = NanoDetConfig().score_threshold
    assert [r["threshold"] for r in held["grounders"]["nanodet"]["rows"]] == [default]


def test_start_past_the_clip_is_one_error_line(tool, tmp_path):
    with pytest.raises(SystemExit, match="no frames"):
        tool.main(["--video", str(CLIP), "--start", "600", "--grounders", "nanodet",
                   "--reference-cache", str(tmp_path / "ref.json")])
