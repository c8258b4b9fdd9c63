"""``discover bench codec``: the learned codec's rate-distortion run on a tiny random model."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CLI, CLIP, cli_env

from discover.bench.codec import IMAGE_ANCHORS, run_bench_codec

pytestmark = pytest.mark.slow

#: crops (x, y) of the bundled clip's first frames, 192 x 128 each
CROPS = ((100, 200), (400, 300), (560, 40))
W, H = 192, 128
BOXES = {"crop0.png": [[20, 20, 70, 100]],
         "crop1.png": [[100, 10, 180, 60], [10, 60, 50, 120]],
         "crop2.png": [[60, 30, 120, 90]]}


def _frames(n: int) -> list[np.ndarray]:
    import av

    with av.open(str(CLIP)) as c:
        return [f.to_ndarray(format="bgr24") for _, f in zip(range(n), c.decode(video=0),
                                                            strict=False)]


def _write_clip(path: Path, frames: list[np.ndarray]) -> None:
    """A short 192 x 128 clip (crops of the sample), so the video mode runs in a second."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        # zerolatency: no frame delay, which edge.sources needs on a clip this short
        s.options = {"crf": "18", "tune": "zerolatency"}
        for img in frames:
            crop = np.ascontiguousarray(img[200:200 + H, 280:280 + W])
            for p in s.encode(av.VideoFrame.from_ndarray(crop, format="bgr24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench_codec_in")
    images = root / "images"
    images.mkdir()
    frames = _frames(3)
    for i, (x, y) in enumerate(CROPS):
        cv2.imwrite(str(images / f"crop{i}.png"), frames[i][y:y + H, x:x + W])
    boxes = root / "boxes.json"
    boxes.write_text(json.dumps(BOXES))
    clip = root / "clip.mp4"
    _write_clip(clip, frames)
    return {"images": images, "boxes": boxes, "clip": clip}


@pytest.fixture(scope="module")
def model() -> object:
    import torch
    from discover.sdk.codecs.learned.model import DiscoverCodecModel, ModelConfig

    torch.manual_seed(0)  # a random model, but the same every run
    return DiscoverCodecModel(ModelConfig.preset("tiny", steps=(2.0, 1.0, 0.5)))


@pytest.fixture(scope="module")
def result(inputs: dict[str, Path], model: object,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench_codec_out")
    r = run_bench_codec(images=inputs["images"], boxes=inputs["boxes"], video=str(inputs["clip"]),
                        max_frames=3, out=out, quiet=True, model=model,
                        jpeg_qualities=(10, 50, 90), webp_qualities=(10, 50, 90),
                        x265_crfs=(30, 51), av1_crfs=(35, 63), video_x264_crfs=(28, 45),
                        video_x265_crfs=(28, 45))
    return r, out


def _number_or_null_with_note(r: dict, key: str) -> None:
    assert key in r, key
    v = r[key]
    if v is None:
        assert isinstance(r.get(key + "_note"), str) and r[key + "_note"], key
    else:
        assert isinstance(v, float) and math.isfinite(v), (key, v)


def test_summary_keys(result: tuple[dict, Path]) -> None:
    r, _ = result
    assert r["images"] == 3 and r["rate_points"] == 3 and r["qualities"] == [1, 2, 3]
    assert isinstance(r["checkpoint_hash"], str) and len(r["checkpoint_hash"]) >= 8
    for a in IMAGE_ANCHORS:
        for m in ("psnr", "msssim"):
            _number_or_null_with_note(r, f"bd_rate_vs_{a}_{m}")
    for a in ("x264", "x265"):
        _number_or_null_with_note(r, f"video_bd_rate_vs_{a}_psnr")
    assert r["region_bits_share"] > 0 and 0 < r["region_area_share"] < 1
    assert r["enc_ms"] > 0 and r["dec_ms"] > 0
    for mode in ("full", "region"):
        assert [p["point"] for p in r["ours"][mode]] == ["q1", "q2", "q3"]
    for a in IMAGE_ANCHORS:
        assert len(r["anchors"][a]) == (2 if a in ("x265", "av1") else 3)
    # the random model is far from the anchors' quality: BD-rates come back null with a note
    # rather than extrapolated, and the one-line summary stays valid JSON (no NaN / inf)
    json.loads(json.dumps(r, allow_nan=False))


def test_bits_and_region_mode(result: tuple[dict, Path]) -> None:
    r, out = result
    saved = json.loads((out / "codec.json").read_text())
    assert len(saved["per_image"]) == 3
    for im in saved["per_image"]:
        s = im["settings"]
        assert all(p["bits"] > 0 and p["bpp"] > 0 for pts in s.values() for p in pts["points"])
        full = {p["point"]: p for p in s["ours_full"]["points"]}
        region = {p["point"]: p for p in s["ours_region"]["points"]}
        for q in full:
            # (that regions cost fewer bits than the whole frame is a property of a trained
            # model: test_shipped_checkpoint_codes_regions_for_less_than_the_frame)
            assert full[q]["task_bits"] == 0 and region[q]["rest_bits"] == 0
            assert region[q]["task_bits"] > 0 and full[q]["rest_bits"] > 0
            assert region[q]["region_psnr"] is not None
        assert len(im["regions"]) == len(BOXES[im["name"]])
        for reg in im["regions"]:  # snapped to the codec's 16 px grid, inside the frame
            x0, y0, x1, y1 = reg["box"]
            assert x0 % 16 == 0 and y0 % 16 == 0 and x1 <= W and y1 <= H
        # the anchors get better with rate
        jpeg = s["jpeg"]["points"]
        assert jpeg[0]["bits"] < jpeg[-1]["bits"] and jpeg[0]["psnr"] < jpeg[-1]["psnr"]
    assert r["region_bits_share"] > 0


def test_video_mode(result: tuple[dict, Path]) -> None:
    r, out = result
    v = r["video"]
    assert v["frames"] == 3 and (v["width"], v["height"]) == (W, H)
    for p in v["ours"]["full"]:
        assert p["bits"] > 0 and p["rest_bits"] > 0 and p["side_bits"] > 0
    for full, task in zip(v["ours"]["full"], v["ours"]["task"], strict=True):
        assert task["bits"] < full["bits"] and task.get("rest_bits", 0) == 0
    for a in ("x264", "x265"):
        pts = v["anchors"][a]["points"]
        assert len(pts) == 2 and pts[0]["bits"] > pts[1]["bits"] > 0
    saved = json.loads((out / "codec.json").read_text())
    frames = saved["video"]["per_frame"]["full_q1"]
    assert [f["frame"] for f in frames] == [0, 1, 2]
    assert all(f["decode_errors"] == 0 for fs in saved["video"]["per_frame"].values()
               for f in fs)


def test_plots(result: tuple[dict, Path]) -> None:
    r, out = result
    names = {Path(p).name for p in r["plots"]}
    assert {"rd_psnr.png", "rd_msssim.png", "rd_region_psnr.png",
            "rd_video_psnr.png"} <= names
    for p in r["plots"]:
        img = cv2.imread(p)
        assert img is not None and img.shape[0] > 100


def test_checkpoint_folder_and_grounder(inputs: dict[str, Path], model: object,
                                        tmp_path: Path) -> None:
    """A saved checkpoint folder loads by path, and without --boxes the nanodet grounder
    finds the task boxes (street crops hold people and cars)."""
    ck = tmp_path / "ck"
    model.save_pretrained(ck)
    r = run_bench_codec(images=inputs["images"], checkpoint=ck, out=tmp_path / "out",
                        quiet=True, qualities=(2,), jpeg_qualities=(50,), webp_qualities=(),
                        x265_crfs=(), av1_crfs=())
    assert r["checkpoint"] == str(ck) and r["boxes"] == "nanodet grounder"
    assert r["region_area_share"] > 0  # the grounder found task objects
    assert r["images"] == 3 and r["bd_rate_vs_jpeg_psnr"] is None
    assert "fewer than 2" in r["bd_rate_vs_jpeg_psnr_note"] or "overlap" in \
        r["bd_rate_vs_jpeg_psnr_note"]
    assert r["bd_rate_vs_x265_psnr"] is None and r["bd_rate_vs_x265_psnr_note"]


# -- bad input: one error line through the CLI -------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "bench", "codec", *args, "-q"], env=cli_env(),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _one_error_line(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "internal error" not in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_cli_bad_images_folder(tmp_path: Path) -> None:
    _one_error_line(_cli("--images", str(tmp_path / "nope"), "--out", str(tmp_path / "o")),
                    "--images", "no such folder")
    (tmp_path / "empty").mkdir()
    _one_error_line(_cli("--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")),
                    "no image files")
    (tmp_path / "empty" / "broken.jpg").write_bytes(b"not a JPEG")
    _one_error_line(_cli("--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")),
                    "broken.jpg", "not an image")


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('[[1, 2, 3, 4]]', "expected a JSON object"),
    ('{"crop0.png": [[1, 2, 3]]}', "box 0"),
    ('{"crop0.png": [[50, 2, 10, 40]]}', "empty"),
    ('{"other.png": [[1, 2, 30, 40]]}', "names none of the images"),
])
def test_cli_bad_boxes_file(inputs: dict[str, Path], tmp_path: Path, content: str,
                            needle: str) -> None:
    bad = tmp_path / "boxes.json"
    bad.write_text(content)
    _one_error_line(_cli("--images", str(inputs["images"]), "--boxes", str(bad), "--out",
                         str(tmp_path / "o")), "--boxes", needle)


def test_missing_held_out_photos_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    import discover.sdk.codecs.learned.training as training
    from discover.sdk.errors import DiscoverError

    monkeypatch.setattr(training, "OPENCV_DATA", tmp_path)
    with pytest.raises(DiscoverError, match="apt-get install opencv-doc.*--images"):
        run_bench_codec(out=tmp_path / "o", quiet=True)


def test_bad_video_arguments_fail_before_any_work(inputs: dict[str, Path],
                                                  tmp_path: Path) -> None:
    from discover.sdk.errors import DiscoverError

    with pytest.raises(DiscoverError, match="--max-frames applies to --video"):
        run_bench_codec(images=inputs["images"], max_frames=3, out=tmp_path, quiet=True)
    with pytest.raises(DiscoverError, match="file not found"):
        run_bench_codec(images=inputs["images"], video=str(tmp_path / "nope.mp4"),
                        out=tmp_path, quiet=True)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(DiscoverError, match="cannot read video"):
        run_bench_codec(images=inputs["images"], video=str(bad), out=tmp_path, quiet=True)


def test_shipped_checkpoint_codes_regions_for_less_than_the_frame(inputs, tmp_path) -> None:
    """With the shipped checkpoint, side + task regions cost fewer bits than the full frame at
    every rate point, and the full-frame curve rises with the rate (a random model shows
    neither reliably: half of the seeds tried put two regions' framing above a near-empty
    rest)."""
    r = run_bench_codec(images=inputs["images"], boxes=inputs["boxes"], out=tmp_path,
                        quiet=True, jpeg_qualities=(10, 90), webp_qualities=(10, 90),
                        x265_crfs=(51,), av1_crfs=(63,))
    assert r["rate_points"] == 5 and r["region_bits_share"] < 1
    for im in json.loads((tmp_path / "codec.json").read_text())["per_image"]:
        s = im["settings"]
        full = [p for p in s["ours_full"]["points"]]
        region = {p["point"]: p for p in s["ours_region"]["points"]}
        for p in full:
            assert region[p["point"]]["bits"] < p["bits"], (im["name"], p["point"])
        assert [p["bits"] for p in full] == sorted(p["bits"] for p in full)
        assert full[-1]["psnr"] > full[0]["psnr"]
