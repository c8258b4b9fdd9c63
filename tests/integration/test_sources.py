"""Edge sources beyond plain files: a live HTTP stream that ends and is reopened with backoff,
and image folders with an unreadable file among the images."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from discover.edge.sources import open_source, paced
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.errors import DiscoverError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_clip(tmp_path: Path):
    """The sample clip as a streamable MPEG-TS (no seeking needed, like a live feed) served over
    HTTP on a free loopback port."""
    ts = tmp_path / "street.ts"
    with av.open(str(SAMPLE_CLIP)) as inp, av.open(str(ts), "w", format="mpegts") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 768, 576, "yuv420p"
        s.options = {"crf": "18"}
        for f in inp.decode(video=0):
            out.mux(s.encode(av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"),
                                                        format="rgb24")))
        out.mux(s.encode(None))
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/street.ts"
    finally:
        server.shutdown()
        server.server_close()


def test_live_url_reopens_when_the_stream_ends(http_clip):
    src = open_source(http_clip)
    assert src.live and (src.width, src.height) == (768, 576)
    frames = list(paced(src, realtime=False, max_frames=130))
    src.close()
    # the clip has 100 frames: the last 30 came after the source was reopened
    assert len(frames) == 130
    assert [f.index for f in frames] == list(range(130))
    assert src.reconnects >= 1
    # after the reopen the stream starts over: frame 100 is the clip's frame 0 again
    def diff(a: int, b: int) -> float:
        return float(np.mean(np.abs(frames[a].image.astype(int) - frames[b].image)))

    assert diff(100, 0) < 2.0 < diff(99, 0)


def test_live_url_that_never_answers_is_one_clear_error():
    with pytest.raises(DiscoverError, match="cannot read video"):
        open_source("http://127.0.0.1:9/nothing.mp4")


def test_image_folder_in_name_order_skipping_unreadable(tmp_path: Path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    for i, img in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), img)
    (tmp_path / "002b.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    src = open_source(str(tmp_path), fps=5)
    got = [f.image for f in paced(src, realtime=False, max_frames=None)]
    assert len(got) == 4 and src.skipped == 1 and src.fps == 5
    for a, b in zip(got, imgs, strict=True):
        np.testing.assert_array_equal(a, b)  # PNG is lossless


def test_empty_image_folder_and_missing_webcam_are_clear_errors(tmp_path: Path):
    with pytest.raises(DiscoverError, match="no images"):
        open_source(str(tmp_path))
    with pytest.raises(DiscoverError, match="webcam 97 not found"):
        open_source("97")


def test_short_clip_with_decoder_delay_gives_every_frame(tmp_path: Path):
    """x264 holds frames back (B-frame delay): in a 3-frame clip all of them are still inside
    the decoder when the first comes out; none may be lost."""
    path = tmp_path / "short.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(3):
            img = np.full((64, 64, 3), 40 + 80 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    src = open_source(str(path), fps=None)
    frames = list(src.frames())
    src.close()
    assert len(frames) == 3
    assert [abs(f.mean() - v) < 4 for f, v in zip(frames, (40, 120, 200), strict=True)] == [True] * 3
