"""tools/try_task_stream.py: settings parse as documented, the held background keeps the camera's
pixels only inside the boxes and where a box left, a B-frame stream comes back whole and in order
with its encoder delay, a reduced size and a frame step come back whole, and the evaluation
split is refused. Real x265 and decoder on small synthetic frames."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("try_task_stream",
                                                  REPO / "tools" / "try_task_stream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def walking_square(n: int) -> list[np.ndarray]:
    """A smooth background and a bright 16 px square walking right 5 px a frame."""
    yy, xx = np.mgrid[0:64, 0:96]
    base = np.stack([xx * 2, yy * 3, (xx + yy) % 256], axis=-1).astype(np.uint8)
    frames = []
    for i in range(n):
        f = base.copy()
        f[20:36, 4 + 5 * i:20 + 5 * i] = 250
        frames.append(f)
    return frames


def test_settings_parse_as_documented(tool):
    plain, anchor = tool.parse_setting("plain"), tool.parse_setting("anchor")
    assert not plain["anchor"] and anchor["anchor"]
    assert plain["bframes"] == plain["lookahead"] == plain["gop"] == 0 and plain["freeze"] == -1
    s = tool.parse_setting("gop=50,bframes=2,lookahead=4,cascade=0/3/2/3,x265=ref=5")
    assert (s["gop"], s["bframes"], s["lookahead"]) == (50, 2, 4)
    assert s["cascade"] == [0.0, 3.0, 2.0, 3.0] and s["x265"] == "ref=5"
    with pytest.raises(SystemExit, match="unknown option 'speed'"):
        tool.parse_setting("speed=3")
    s = tool.parse_setting("encoder=av1,preset=6,params=enable-cdef=0,crfs=40/52")
    assert (s["encoder"], s["preset"], s["x265"]) == ("av1", "6", "enable-cdef=0")
    assert s["crfs"] == [40, 52] and plain["crfs"] is None
    for bad, why in (("encoder=vp8", "use hevc, h264 or av1"), ("encoder=av1,background=2",
                     "no ROI"), ("encoder=h264,bframes=2", "x265 options")):
        with pytest.raises(SystemExit, match=why):
            tool.parse_setting(bad)


@pytest.mark.parametrize("encoder", ["h264", "av1"])
def test_other_encoder_families_come_back_whole(tool, encoder):
    frames = walking_square(6)
    s = tool.parse_setting(f"encoder={encoder}")
    size, decoded, _ = tool.code_and_decode(frames, [[] for _ in frames],
                                            30 if encoder == "h264" else 40, s)
    assert size > 0 and len(decoded) == len(frames)
    errors = [np.abs(d.astype(int) - f.astype(int)).mean()
              for d, f in zip(decoded, frames, strict=True)]
    assert max(errors) < 6, errors


def test_held_background_takes_the_camera_only_in_boxes_and_where_a_box_left(tool):
    h, w = 32, 48
    first = np.full((h, w, 3), 10, np.uint8)
    held, last, img = tool.hold_background(first, [(0, 0, 8, 8)], None, np.zeros((h, w), bool),
                                           0, 0)
    assert (img == first).all() and last[:8, :8].all() and not last[8:, :].any()
    second = np.full((h, w, 3), 200, np.uint8)  # the whole scene changed; the box moved right
    held, last, img = tool.hold_background(second, [(16, 0, 24, 8)], held, last, 1, 0)
    assert (img[:8, 16:24] == 200).all()  # inside this frame's box: the camera
    assert (img[:8, :8] == 200).all()  # the box left these pixels: taken from the camera
    assert (img[16:, :] == 10).all() and (img[:8, 30:] == 10).all()  # elsewhere: held
    third = np.full((h, w, 3), 90, np.uint8)
    _, _, img = tool.hold_background(third, [], held, last, 2, 2)  # refresh every 2 frames
    assert (img == 90).all()


def test_a_b_frame_stream_comes_back_whole_with_its_delay(tool):
    frames = walking_square(14)
    s = tool.parse_setting("bframes=2,lookahead=4")
    size, decoded, _, delay = tool.code_buffered(frames, 30, s)
    assert size > 0 and len(decoded) == len(frames) and delay >= s["lookahead"]
    errors = [np.abs(d.astype(int) - f.astype(int)).mean()
              for d, f in zip(decoded, frames, strict=True)]
    shifted = np.abs(decoded[5].astype(int) - frames[6].astype(int)).mean()
    assert max(errors) < 6 and shifted > 2 * errors[5]  # display order, not coding order


def test_the_evaluation_split_is_refused(tool):
    with pytest.raises(SystemExit, match="evaluation split"):
        tool.main(["--start", "400", "--frames", "200", "plain"])


def test_a_reduced_size_and_a_frame_step_code_less_and_come_back_at_full_size(tool):
    s = tool.parse_setting("size=48x32,down=area,up=cubic,every=2")
    assert (s["size"], s["down"], s["up"], s["every"]) == ((48, 32), "area", "cubic", 2)
    frames = walking_square(6)
    boxes = [[(4 + 5 * i, 20, 20 + 5 * i, 36)] for i in range(6)]
    full, _, _ = tool.code_and_decode(frames, boxes, 20, tool.parse_setting("plain"))
    small, dec, _ = tool.code_and_decode(frames, boxes, 20, tool.parse_setting("size=48x32"))
    assert small < full and all(d.shape == (64, 96, 3) for d in dec)
    stepped, dec, _ = tool.code_and_decode(frames, boxes, 20, tool.parse_setting("every=2"))
    assert stepped < full and len(dec) == 6
    assert all((dec[i] == dec[i - 1]).all() for i in (1, 3, 5))  # held, not coded
    assert not (dec[2] == dec[1]).all()
