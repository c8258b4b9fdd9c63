"""discover.bench.viewer: the extras, misses and PSNR it reports behave as defined, on frames
of the bundled clip with the real NanoDet, and the whole bench runs on a few frames."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.rd import MAX_DB

from discover.bench import viewer
from discover.bench.ghosts import scored


@pytest.fixture(scope="module")
def clip() -> tuple[list[np.ndarray], list, object]:
    from discover.sink.tasks import TASK_MODELS

    from discover.bench.ground import load_frames

    frames, _ = load_frames(str(SAMPLE_CLIP), 40, 2)
    model = TASK_MODELS.create({"type": "nanodet", "score_threshold": viewer.WEAK_SCORE})
    return frames, [scored(model, f) for f in frames], model


def test_the_original_itself_has_no_extras_and_top_psnr(clip) -> None:
    frames, ref, _ = clip
    s = viewer.scores(frames, frames, ref, ref, [True, False], 0.3)
    assert s["extras_per_frame"] == s["misses_per_frame"] == 0
    assert s["psnr"] == MAX_DB
    assert s["extras_per_frame_on_rests"] == s["extras_per_frame_between_rests"] == 0


def test_a_pasted_person_is_an_extra_and_a_removed_one_a_miss(clip) -> None:
    frames, ref, model = clip
    people = sorted((d for d in ref[0] if d[0] == "person" and d[2] >= viewer.STRONG),
                    key=lambda d: -d[2])
    x0, y0, x1, y1 = people[0][1].astype(int)
    ghost = frames[0].copy()  # the person shown a second time, on the lawn below
    ghost[420:420 + y1 - y0, 300:300 + x1 - x0] = frames[0][y0:y1, x0:x1]
    s = viewer.scores(frames[:1], [ghost], ref[:1], [scored(model, ghost)], None, 0.3)
    assert s["extras_per_frame"] >= 1
    assert s["psnr"] < 40
    empty = np.full_like(frames[0], 128)  # nothing shown: every original person is missed
    s = viewer.scores(frames[:1], [empty], ref[:1], [scored(model, empty)], None, 0.3)
    assert s["misses_per_frame"] >= len(people) and s["extras_per_frame"] == 0


def test_psnr_at_interpolates_in_log_rate_and_never_extrapolates() -> None:
    curve = [{"kbps": 100.0, "psnr": 30.0}, {"kbps": 400.0, "psnr": 36.0}]
    assert viewer.psnr_at(curve, 200.0) == pytest.approx(33.0)
    assert viewer.psnr_at(curve, 50.0) is None and viewer.psnr_at(curve, 500.0) is None


def test_bench_runs_on_a_few_frames() -> None:
    """The default edge sends no rest (its full-scale task stream is the whole view); with
    ``rest_crf`` set the rest comes back and costs bytes of its own."""
    res = viewer.run(str(SAMPLE_CLIP), 0, 4, [{"type": "background"}, {"type": "direct"}],
                     crfs=(30, 44))
    lo, hi = res["x265"]["curve"]
    assert lo["kbps"] > hi["kbps"] and lo["psnr"] > hi["psnr"]
    assert res["rests"] == 0 and not res["kbps_payloads"].get("rest")
    assert res["kbps"] >= sum(res["kbps_payloads"].values()) > 0
    assert len(res["composers"]) == 2
    for s in res["composers"].values():
        assert 20 < s["psnr"] < MAX_DB and not math.isnan(s["extras_per_frame"])
    rest = viewer.run(str(SAMPLE_CLIP), 0, 4, [{"type": "background"}], crfs=(30, 44),
                      codec={"type": "video", "rest_crf": 30})
    assert rest["rests"] >= 1 and rest["kbps_payloads"]["rest"] > 0
    assert rest["kbps"] > sum(v for k, v in rest["kbps_payloads"].items() if k != "rest") > 0


def test_bench_ends_its_streams(capfd) -> None:
    """The bench's edge closes its encoders: SVT-AV1 torn down mid-stream prints an error
    line ("deinit called without sending EOS") that a user would take for a failure."""
    gc.collect()
    capfd.readouterr()
    res = viewer.run(str(SAMPLE_CLIP), 0, 3, [{"type": "direct"}], crfs=(30, 44),
                     codec={"type": "video", "encoder": "av1"})
    assert res["kbps_payloads"]["task"] > 0
    gc.collect()  # the edge's encoders are gone by now
    assert "Svt[error]" not in capfd.readouterr().err


def test_ghosts_on_a_sink_folder_of_the_originals_counts_nothing(clip, tmp_path) -> None:
    """``python -m discover.bench.ghosts`` on frames NNNNNN.png that are the clip's own."""
    import cv2

    from discover.bench import ghosts
    from discover.bench.ground import load_frames

    frames, _ = load_frames(str(SAMPLE_CLIP), 0, 2)
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i:06d}.png"), f)
    res = ghosts.run(tmp_path, SAMPLE_CLIP)
    assert res["frames"] == 2
    assert res["extra_objects_per_frame"] == res["extra_objects_per_frame_not_even_weak"] == 0
