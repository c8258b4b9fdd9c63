"""Region-of-interest QP offsets on PyAV frames, read by ffmpeg's libx265 and libx264 wrappers.

PyAV cannot write ``AV_FRAME_DATA_REGIONS_OF_INTEREST`` side data itself, so each frame goes
through a small filter graph ``buffer -> addroi (one per box) -> addroi (whole frame, 0) ->
buffersink`` (about 2 ms at 384x288). Traps this module exists to avoid:

* libx265 crashes when ROI side data first appears in the middle of a stream: every frame
  carries at least the whole-frame region with offset 0, from the first frame on;
* ffmpeg gives the first region covering a block precedence, so the boxes come first and the
  whole-frame region last;
* ffmpeg ignores ROI when adaptive quantisation is off (x265's ultrafast preset):
  :func:`encoder_params` adds ``aq-mode=1:aq-strength=0.01`` there (the plain stream within a
  few bytes; with this x265 build a strength of exactly 0 still switches AQ off and ROI is
  silently dropped);
* libsvtav1 ignores ROI side data: the codec does not tag frames for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

Box = tuple[int, int, int, int]

#: encoders whose ffmpeg wrapper applies ROI side data
ROI_ENCODERS = frozenset({"libx265", "libx264"})


def tag_roi(frame: Any, boxes: Sequence[Box], qoffset: float, background: float = 0.0) -> Any:
    """``frame`` (an av.VideoFrame) with ROI side data: ``boxes`` at ``qoffset`` (-1..1, a
    fraction of the QP range, which ffmpeg scales by 51 for 8-bit x265/x264; negative = better
    quality) and the rest of the frame at ``background``."""
    from av.filter import Graph

    w, h = frame.width, frame.height
    g = Graph()
    src = g.add_buffer(width=w, height=h, format=frame.format.name,
                       time_base=frame.time_base or Fraction(1, 10))
    prev = src
    regions = [(*b, qoffset) for b in boxes if b[2] > b[0] and b[3] > b[1]] \
        if qoffset != background else []
    for x0, y0, x1, y1, q in [*regions, (0, 0, w, h, background)]:
        f = g.add("addroi", f"x={x0}:y={y0}:w={x1 - x0}:h={y1 - y0}:qoffset={q:.4f}")
        prev.link_to(f)
        prev = f
    sink = g.add("buffersink")
    prev.link_to(sink)
    g.configure()
    g.push(frame)
    return g.pull()


def encoder_params(encoder: str, preset: str, roi: bool) -> str:
    """Extra x265 parameters so ROI is honoured (AQ on at a negligible strength where the
    preset switches it off); empty for other encoders."""
    if encoder == "libx265" and roi and preset == "ultrafast":
        return "aq-mode=1:aq-strength=0.01"
    return ""
