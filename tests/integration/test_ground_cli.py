"""``discover ground`` (boxes of a task profile as JSON + an annotated picture), ``discover edge``
with tracking, and ``discover bench ground``, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import CLI, CLIP, CLIP_SIZE, cli_env


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=cli_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_json(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1, p.stdout[:500]
    return json.loads(lines[0])


def assert_one_error_line(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "internal error" not in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def frame_png(tmp_path_factory) -> Path:
    """Frame 0 of the clip (three people walking, cars parked) saved as a PNG."""
    with av.open(str(CLIP)) as c:
        img = next(c.decode(video=0)).to_ndarray(format="bgr24")
    p = tmp_path_factory.mktemp("ground") / "street-0.png"
    assert cv2.imwrite(str(p), img)
    return p


def test_ground_image_prints_boxes_and_draws_them(frame_png, tmp_path):
    out = tmp_path / "check" / "annotated.png"  # the folder does not exist yet
    s = one_json(run("ground", "--image", str(frame_png), "--task", "detection",
                     "--grounder", "nanodet", "--annotate", str(out), "--json"))
    w, h = CLIP_SIZE
    assert (s["width"], s["height"], s["grounder"]) == (w, h, "nanodet")
    assert s["count"] == len(s["boxes"])
    people = [b for b in s["boxes"] if b["label"] == "person"]
    assert len(people) >= 3
    scores = [b["score"] for b in s["boxes"]]
    assert scores == sorted(scores, reverse=True)
    for b in s["boxes"]:
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert 0 < b["score"] <= 1
    # the picture: same size as the input, changed along the drawn boxes and nowhere far away
    assert s["annotated"] == str(out)
    drawn, orig = cv2.imread(str(out)), cv2.imread(str(frame_png))
    assert drawn is not None and drawn.shape == orig.shape
    changed = np.any(drawn != orig, axis=2)
    x0, y0, x1, y1 = (int(round(v)) for v in people[0]["box"])
    assert changed[max(0, y0 - 2):y0 + 3, x0:x1].mean() > 0.5  # its top edge is drawn
    near = np.zeros_like(changed)
    for b in s["boxes"]:
        bx0, by0, bx1, by1 = (int(round(v)) for v in b["box"])
        near[max(0, by0 - 25):by1 + 25, max(0, bx0 - 5):bx1 + 150] = True
    assert changed.any() and not (changed & ~near).any()


def test_ground_image_task_labels_decide_what_is_found(frame_png, tmp_path):
    (tmp_path / "parking.yaml").write_text("format: discover-task-profile\nversion: 1\n"
                                           "task: parking\nlabels: [car, van]\n")
    det = one_json(run("ground", "--image", str(frame_png), "--grounder", "nanodet", "--json"))
    env = {**cli_env(), "DISCOVER_PROFILES_DIR": str(tmp_path)}
    p = subprocess.run([*CLI, "ground", "--image", str(frame_png), "--task", "parking",
                        "--grounder", "nanodet", "--json"], env=env, capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    park = one_json(p)
    assert det["tasks"] == ["detection"] and park["tasks"] == ["parking"]
    assert park["labels"] == 2 and det["labels"] > 2
    assert "person" in {b["label"] for b in det["boxes"]}
    assert park["boxes"] and {b["label"] for b in park["boxes"]} <= {"car", "van"}


def test_ground_video_frames_with_tracking(tmp_path):
    out = tmp_path / "v.png"
    s = one_json(run("ground", "--source", str(CLIP), "--grounder", "nanodet", "--max-frames",
                     "7", "--set", "edge.tracking.every=3", "--annotate", str(out),
                     "--annotate-frame", "4", "--json"))
    assert s["frame_count"] == 7 and [f["index"] for f in s["frames"]] == list(range(7))
    assert [f["grounded"] for f in s["frames"]] == [True, False, False, True, False, False, True]
    assert s["grounded_frames"] == 3
    assert all(len(f["boxes"]) >= 3 for f in s["frames"])  # tracked frames keep their boxes
    assert s["annotated_frame"] == 4 and cv2.imread(str(out)).shape[:2] == CLIP_SIZE[::-1]


BAD_GROUND = {
    "missing image": (["--image", "/nonexistent/pic.png"], ["/nonexistent/pic.png",
                                                           "not found"]),
    "folder as image": (["--image", "{tmp}"], ["{tmp}", "not a regular file"]),
    "text as image": (["--image", "{tmp}/notes.png"], ["{tmp}/notes.png", "not an image"]),
    "unknown task": (["--image", "{frame}", "--task", "nosuchtask"], ["nosuchtask"]),
    "unknown grounder": (["--image", "{frame}", "--grounder", "nosuchgrounder"],
                         ["nosuchgrounder"]),
    "bad annotate type": (["--image", "{frame}", "--annotate", "{tmp}/out.xyz"],
                          ["{tmp}/out.xyz", ".png"]),
    "missing video": (["--source", "/nonexistent/clip.mp4"], ["/nonexistent/clip.mp4"]),
    "zero max frames": (["--source", str(CLIP), "--max-frames", "0"], ["--max-frames"]),
    "annotate frame past the end": (["--source", str(CLIP), "--max-frames", "2", "--annotate",
                                     "{tmp}/a.png", "--annotate-frame", "9"],
                                    ["--annotate-frame 9", "--max-frames 2"]),
    "bad tracking value": (["--source", str(CLIP), "--set", "edge.tracking.every=0"],
                           ["edge.tracking.every"]),
}


@pytest.mark.parametrize("case", list(BAD_GROUND))
def test_ground_bad_input(case, tmp_path, frame_png):
    (tmp_path / "notes.png").write_text("not a picture\n" * 20)
    args, needles = BAD_GROUND[case]
    fill = {"{tmp}": str(tmp_path), "{frame}": str(frame_png)}

    def sub(text: str) -> str:
        for k, v in fill.items():
            text = text.replace(k, v)
        return text

    assert_one_error_line(run("ground", *map(sub, args)), *map(sub, needles))


def test_edge_with_tracking_grounds_every_fifth_frame(broker):
    s = one_json(run("edge", "--source", str(CLIP), "--max-frames", "20", "--broker", broker.url,
                     "--set", "edge.tracking.every=5", "--set", "edge.codec.type=classical",
                     "--json"))
    assert s["frames"] == 20 and s["published"] == 20
    assert s["grounded_frames"] == 4


def test_edge_grounds_every_third_frame_by_default(broker):
    s = one_json(run("edge", "--source", str(CLIP), "--max-frames", "6", "--broker", broker.url,
                     "--set", "edge.codec.type=classical", "--json"))
    assert s["frames"] == 6 and s["grounded_frames"] == 2  # frames 0 and 3, tracked between
    s = one_json(run("edge", "--source", str(CLIP), "--max-frames", "6", "--broker", broker.url,
                     "--set", "edge.codec.type=classical", "--set", "edge.tracking.every=1",
                     "--json"))
    assert s["grounded_frames"] == s["frames"] == 6


def test_bench_ground_writes_results_and_plot(tmp_path):
    """A small in-process run: tracked at K = 2 and 5; a grounder that cannot be built is
    skipped with its reason (as grounding-dino without weights)."""
    from discover.bench.ground import run_bench_ground

    s = run_bench_ground(max_frames=10, out=tmp_path, quiet=True, every=(2, 5), repeats=1,
                         trackers=("flow", "hold"), grounders=("motion", "nanodet", "nosuch"))
    assert s["frames"] == 10 and set(s["grounders"]) == {"motion", "nanodet"}
    assert "nosuch" in s["skipped"]["nosuch"]
    full = json.loads((tmp_path / "ground.json").read_text())
    for key, r in full["results"].items():
        assert r["fps"] > 0
        runs = {(t["every"], t["tracker"]): t for t in r["tracked"]}
        assert set(runs) == {(k, t) for k in (2, 5) for t in ("flow", "hold")}
        for (k, _), t in runs.items():
            assert 0.0 <= t["agreement_map50"] <= 1.0 and t["fps"] > 0
            assert t["grounded_frames"] == len(range(0, 10, k)), key
    plot = cv2.imread(str(tmp_path / "ground.png"))
    assert plot is not None and plot.std() > 10  # something drawn on the white canvas


def test_bench_ground_bad_start():
    assert_one_error_line(run("bench", "ground", "--start", "1000", "--json"), "--start 1000")
