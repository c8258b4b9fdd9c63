"""Composers on real decoded frames of the clip."""

from __future__ import annotations

import av
import numpy as np
import pytest
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.codecs import CODECS
from discover.sdk.grounders import GROUNDERS
from discover.sdk.regions import Region, pad_and_clip
from discover.sink.composers import COMPOSERS


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def decoded_frames():
    """(frame index, original, decoded dict, regions) for 30 frames, rest every 10th."""
    codec = CODECS.create("classical")
    grounder = GROUNDERS.create("motion")
    out = []
    with av.open(str(SAMPLE_CLIP)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= 30:
                break
            img = f.to_ndarray(format="bgr24")
            h, w = img.shape[:2]
            regions = []
            for d in grounder.ground(img, []):
                box = pad_and_clip(d.box, 0.1, w, h)
                if box:
                    regions.append(Region(len(regions), box, "object", d.score, ("detection",)))
            coded = codec.compress(img, regions, send_rest=i % 10 == 0)
            out.append((i, img, codec.decompress({**coded, "table": regions, "size": (w, h)}),
                        regions))
    return out


def test_direct_returns_the_codec_reconstruction(decoded_frames):
    direct = COMPOSERS.create("direct")
    for i, _, dec, regions in decoded_frames[:3]:
        assert direct.compose(dec, {"frame": i, "regions": regions}) is dec["x_hat"]


def test_background_beats_thumbnail_between_rest_frames(decoded_frames):
    bg, direct = COMPOSERS.create("background"), COMPOSERS.create("direct")
    assert COMPOSERS.get("background").needs_rest
    gains = []
    for i, img, dec, regions in decoded_frames:
        info = {"frame": i, "regions": regions}
        out_bg = bg.compose(dec, info)
        if i % 10 == 0:
            assert out_bg is dec["x_hat"]  # a rest frame is the new background
            continue
        gains.append(psnr(out_bg, img) - psnr(direct.compose(dec, info), img))
        for r in regions:  # inside task regions: the decoded crops, as the codec pastes them
            x0, y0, x1, y1 = r.box
            np.testing.assert_array_equal(out_bg[y0:y1, x0:x1], dec["x_hat"][y0:y1, x0:x1])
    # moving objects the grounder missed show at their old place in the background, so a
    # frame can lose a little; on average the full-resolution background wins clearly
    assert np.mean(gains) > 2.0, gains
    assert np.mean(np.array(gains) > 0) > 0.7, gains


def test_background_falls_back_before_first_rest_and_when_stale(decoded_frames):
    bg = COMPOSERS.create({"type": "background", "max_age_frames": 3})
    i, _, dec, regions = decoded_frames[1]  # no rest seen yet
    assert bg.compose(dec, {"frame": i, "regions": regions}) is dec["x_hat"]
    i0, _, dec0, r0 = decoded_frames[0]
    bg.compose(dec0, {"frame": i0, "regions": r0})
    i5, _, dec5, r5 = decoded_frames[5]  # 5 frames after the rest > max age 3
    assert bg.compose(dec5, {"frame": i5, "regions": r5}) is dec5["x_hat"]
