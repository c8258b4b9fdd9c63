"""Try a task-stream encoder option on the development split before it goes near the codec.

Codes the frames with the `video` codec's own low-delay HEVC stream (``StreamEncoder``, the
machine-view options) at several CRFs, once per setting, decodes each with ``StreamDecoder``,
and scores NanoDet on the decoded frames against NanoDet on the originals as ``discover bench
tasks`` does (reference score 0.3, headline classes with >= 20 reference boxes, mAP@0.5). Then
the BD-rate of every setting against the first, on detection and on PSNR (``bench.tasks.bd_rate``:
pchip on each curve's rate-score front), the detection one with its 95 % paired-bootstrap
interval over frames (``bench.bootstrap``): on a few hundred frames one point's mAP moves by a
few hundredths, and that is tens of per cent of BD-rate. docs/video-codec.md lists what this
found.

A setting is ``plain`` (the codec's task stream as it is), ``anchor`` (the whole frame through
x265 as ``bench tasks`` codes its anchor: medium preset, B-frames, lookahead), or
comma-separated ``key=value`` of:

- ``gop=N``: a keyframe every N frames (the codec's ``gop``);
- ``cascade=0/3/2/3``: a per-frame QP offset cycle for predicted frames (QP units, through
  whole-frame ROI side data), as HM's low-delay configuration does;
- ``background=Q``: predicted frames coarser by Q QP outside the grounder's boxes (the default
  edge's NanoDet every 3rd frame plus tracking, boxes grown by ``grow=PX``, default 16);
- ``freeze=N``: outside the grounder's boxes (grown by ``grow``) the encoder gets a held
  background instead of the camera's pixels, refreshed from the camera where a box left and
  wholly every N frames (0: never): what a static background costs once it is not re-coded;
- ``bframes=N``, ``lookahead=M``: B-frames and x265's lookahead (cu-tree) as the full-frame
  anchor has them (``bframes=4,lookahead=20``); these frames leave the encoder late, so they are
  coded outside the codec's one-chunk-a-frame ``StreamEncoder`` and the encoder's delay in
  frames is printed (the issue's latency budget: p50 capture -> decoded under 500 ms, 5 frames
  at 10 fps, everything else included);
- ``size=WxH``: code the frames at this size (``down``: cv2's ``linear``, ``area``, ``cubic``
  or ``lanczos``, default ``linear``, which is how NanoDet resizes to its 416x416 input) and
  upscale the decoded frames back (``up``, default ``linear``);
- ``every=N``: code every Nth frame only; the frames between show the last decoded one (the
  task stream's frame rate divided by N, as a sink that holds its last frame sees it);
- ``crfs=40/46/52``: this setting's CRFs instead of ``--crfs`` (SVT-AV1's scale is 0-63);
- ``encoder=NAME``: the codec's encoder family, ``hevc`` (default), ``h264`` or ``av1``
  (SVT-AV1's low-delay structure; no ROI, so not with ``cascade`` or ``background``, and no
  ``bframes``/``lookahead``);
- ``preset=NAME``: the encoder preset (default medium; SVT-AV1 also takes its numbers, 0-13);
- ``params=K=V:K=V`` (or ``x265=``): extra encoder parameters, after the codec's own (the
  codec's ``params``: x265-, x264- or svtav1-params).

``--classes person`` scores detection on the named classes only (``bench tasks --classes``).

Frames 500 on are vtest.avi's evaluation split: this tool refuses them (choose on development
frames, report held-out figures with ``discover bench tasks``)::

    python tools/try_task_stream.py --frames 300 plain "gop=100" "cascade=0/3/2/3" "background=2"
    python tools/try_task_stream.py --frames 300 anchor plain
    python tools/try_task_stream.py --frames 300 anchor size=416x416,up=cubic every=2

Rates count the task stream's bytes only; a sink also receives the ``side`` and two packet
headers, about 5-6 kbit/s at 10 fps, which ``bench tasks`` adds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from fractions import Fraction
from typing import Any

import cv2
import numpy as np

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
EVALUATION_START = 500
QP_RANGE = 51.0  # ffmpeg scales an ROI qoffset of 1 to 51 QP for 8-bit x265


def parse_setting(text: str) -> dict[str, Any]:
    """``plain``, ``anchor`` or ``key=value,...`` -> the options, defaults filled in."""
    out: dict[str, Any] = {"anchor": text == "anchor", "gop": 0, "cascade": [0.0],
                           "background": 0.0, "grow": 16,
                           "preset": "medium", "x265": "", "bframes": 0,
                           "lookahead": 0, "freeze": -1, "size": None,
                           "down": "linear", "up": "linear", "every": 1, "encoder": "hevc",
                           "crfs": None}
    for part in filter(None, text.split(",")) if text not in ("plain", "anchor") else []:
        key, _, value = part.partition("=")
        if key == "cascade":
            out[key] = [float(v) for v in value.split("/")]
        elif key in ("gop", "grow", "bframes", "lookahead", "freeze", "every"):
            out[key] = int(value)
        elif key == "background":
            out[key] = float(value)
        elif key == "size":
            out[key] = tuple(int(v) for v in value.split("x"))
        elif key in ("preset", "x265", "down", "up", "encoder"):
            out[key] = value
        elif key == "params":
            out["x265"] = value
        elif key == "crfs":
            out[key] = [int(v) for v in value.split("/")]
        else:
            raise SystemExit(f"try_task_stream: unknown option {key!r} in {text!r}; use gop, "
                             "cascade, background, grow, freeze, bframes, lookahead, size, "
                             "down, up, every, crfs, encoder, preset or params")
    from discover.sdk.codecs.video.elementary import FAMILIES

    spec, names = FAMILIES.get(out["encoder"]), list(FAMILIES)
    if spec is None:
        raise SystemExit(f"try_task_stream: encoder {out['encoder']!r} in {text!r}; use "
                         f"{', '.join(names[:-1])} or {names[-1]}")
    if not spec.roi and (any(out["cascade"]) or out["background"]):
        raise SystemExit(f"try_task_stream: {text!r}: {spec.encoder} takes no ROI, so no "
                         "cascade or background; drop them or use encoder=hevc")
    if out["encoder"] != "hevc" and (out["bframes"] or out["lookahead"]):
        raise SystemExit(f"try_task_stream: {text!r}: bframes and lookahead are x265 options; "
                         "use encoder=hevc")
    return out


INTERP = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA,
          "lanczos": cv2.INTER_LANCZOS4}


def _scale_box(b: tuple[int, int, int, int], size: tuple[int, int], full: tuple[int, int]
               ) -> tuple[int, int, int, int]:
    """A box of the ``full``-size frame in the pixels of the frame resized to ``size``."""
    sx, sy = size[0] / full[0], size[1] / full[1]
    return (int(b[0] * sx), int(b[1] * sy), math.ceil(b[2] * sx), math.ceil(b[3] * sy))


def hold_background(img: np.ndarray, boxes: list[tuple[int, int, int, int]],
                    held: np.ndarray | None, last: np.ndarray, i: int, every: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held background, this frame's box mask, the frame the encoder gets): camera pixels
    inside the boxes, the held background outside them."""
    mask = np.zeros(img.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    if held is None or (every and i % every == 0):
        held = img.copy()
    else:
        held = held.copy()
        left = last & ~mask  # a box moved off these pixels: they show background now
        held[left] = img[left]
    return held, mask, np.where(mask[..., None], img, held)


def code_buffered(frames: list[np.ndarray], crf: int, s: dict[str, Any]
                  ) -> tuple[int, list[np.ndarray], float, int]:
    """Like ``code_and_decode`` for a stream with B-frames or lookahead, which the codec's
    encoder refuses (its frames leave late): x265 with the codec's machine-view options but
    ``bframes``/``rc-lookahead`` from ``s`` and x265's own ``ipratio`` (cu-tree takes its
    place), flushed at the end. Also returns the median number of frames a frame waited in the
    encoder."""
    import time

    import av
    from discover.sdk.codecs.video.elementary import FAMILIES, encoder_options, join_params

    h, w = frames[0].shape[:2]
    ctx = av.CodecContext.create("libx265", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, 10), Fraction(10, 1)
    # params come after the codec's own x265 options, and the last value of a key wins
    params = join_params(f"bframes={s['bframes']}:rc-lookahead={s['lookahead']}",
                         "ipratio=1.4", s["x265"])
    ctx.options = encoder_options(FAMILIES["hevc"], crf, s["preset"], s["gop"], False, 1,
                                  params, machine=True)
    ctx.open()
    packets, waited, ms = [], [], []
    for i, img in enumerate(frames + [None]):
        t0 = time.perf_counter()
        vf = None
        if img is not None:
            vf = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
            vf.pts, vf.time_base = i, Fraction(1, 10)
        out = ctx.encode(vf)
        ms.append((time.perf_counter() - t0) * 1000)
        waited += [min(i, len(frames) - 1) - p.pts for p in out]
        packets += out
    dec, decoded = av.CodecContext.create("hevc", "r"), []
    for p in packets + [None]:
        decoded += [f.to_ndarray(format="bgr24") for f in dec.decode(p)]
    if len(decoded) != len(frames):
        raise SystemExit(f"try_task_stream: {len(decoded)} of {len(frames)} frames decoded")
    return sum(p.size for p in packets), decoded, float(np.median(ms)), int(np.median(waited))


def code_and_decode(frames: list[np.ndarray], boxes: list[list[tuple[int, int, int, int]]],
                    crf: int, s: dict[str, Any]) -> tuple[int, list[np.ndarray], float]:
    """Bytes of the task stream at ``crf`` with setting ``s``, its decoded frames, and the
    encoder's median ms a frame (ROI tagging included)."""
    import time

    import av
    from discover.sdk.codecs.video.elementary import StreamDecoder, StreamEncoder
    from discover.sdk.codecs.video.roi import tag_roi

    h0, w0 = frames[0].shape[:2]
    if s["size"]:
        frames = [cv2.resize(f, s["size"], interpolation=INTERP[s["down"]]) for f in frames]
        boxes = [[_scale_box(b, s["size"], (w0, h0)) for b in bx] for bx in boxes]
    h, w = frames[0].shape[:2]
    roi = any(s["cascade"]) or bool(s["background"])
    enc = StreamEncoder(s["encoder"], w, h, crf, s["preset"], s["gop"], 0.0, params=s["x265"],
                        machine=True)
    dec, size, out, ms = StreamDecoder(s["encoder"]), 0, [], []
    held, last = None, np.zeros((h, w), dtype=bool)
    for i, (img, bx) in enumerate(zip(frames, boxes, strict=True)):
        if i % s["every"]:  # not coded: the sink holds the last decoded frame
            out.append(out[-1])
            continue
        i //= s["every"]
        t0 = time.perf_counter()
        if s["freeze"] >= 0:
            held, last, img = hold_background(img, bx, held, last, i, s["freeze"])
        vf = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        if roi:  # every frame tagged from the first on (the x265 trap), keyframes at 0
            vf.pts, vf.time_base = i, Fraction(1, 10)
            step = 0.0 if i == 0 else s["cascade"][i % len(s["cascade"])] / QP_RANGE
            back = step + (0.0 if i == 0 else s["background"] / QP_RANGE)
            vf = tag_roi(vf, bx if s["background"] else [], step, back)
        chunk, _ = enc.encode_frame(vf, i == 0)
        ms.append((time.perf_counter() - t0) * 1000)
        size += len(chunk)
        img_hat, why = dec.decode(chunk)
        if img_hat is None:
            raise SystemExit(f"try_task_stream: frame {i} did not decode ({why})")
        if s["size"]:
            img_hat = cv2.resize(img_hat, (w0, h0), interpolation=INTERP[s["up"]])
        out.append(img_hat)
    enc.close()  # its end of stream (SVT-AV1 logs an error without one)
    return size, out, float(np.median(ms))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", nargs="+", help="plain, or key=value,... (module docstring)")
    ap.add_argument("--source", default=VTEST)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--crfs", default="35,38,41,44")
    ap.add_argument("--json", help="write every point here")
    ap.add_argument("--classes", default="", help="score detection on these classes only "
                    "(comma-separated; default: every class with >= 20 reference boxes)")
    a = ap.parse_args(argv)
    if a.source == VTEST and a.start + a.frames > EVALUATION_START:
        raise SystemExit(f"try_task_stream: vtest.avi frames {EVALUATION_START} on are the "
                         "evaluation split; choose on frames 0-499 (--start/--frames)")
    settings = {t: parse_setting(t) for t in a.settings}

    from discover.sdk.metrics import FrameMatches
    from discover.sdk.regions import region_mask

    from discover.bench.bootstrap import bd_rate_interval
    from discover.bench.ground import load_frames
    from discover.bench.tasks import OursPipeline, TaskScorer, bd_rate, code_video
    from discover.progress import Progress

    frames, fps = load_frames(a.source, a.start, a.frames)
    h, w = frames[0].shape[:2]
    regions = OursPipeline(a.source, frames, 0, {"type": "video"}).regions
    # bench tasks' scorer: NanoDet on the originals at 0.3 as the reference, classes with >= 20
    # reference boxes, predictions from 0.05; MS-SSIM on one frame only (not reported here)
    sc = TaskScorer(frames, fps, ("det",), 0.05, len(frames), Progress("try", enabled=False))
    sc.set_references(sc.detect(frames, 0.3), list(range(len(frames))), 20,
                      [c for c in a.classes.split(",") if c])
    sc.ours_masks = [region_mask(rs, w, h) for rs in regions]
    res: dict[str, list[dict[str, Any]]] = {}
    matches: dict[str, dict[str, FrameMatches]] = {}
    for name, s in settings.items():
        g = s["grow"]
        boxes = [[(max(0, r.box[0] - g), max(0, r.box[1] - g), min(w, r.box[2] + g),
                   min(h, r.box[3] + g)) for r in rs] for rs in regions]
        res[name], matches[name] = [], {}
        for crf in s["crfs"] or [int(c) for c in a.crfs.split(",")]:
            delay: int | None = 0
            if s["anchor"]:  # not timed, and its delay is not the question
                size, dec = code_video(frames, fps, "libx265", crf, ("hevc",))
                ms, delay = None, None
            elif s["bframes"] or s["lookahead"]:
                size, dec, ms, delay = code_buffered(frames, crf, s)
            else:
                size, dec, ms = code_and_decode(frames, boxes, crf, s)
            p = {**sc.score(size, dec, f"crf{crf}"),
                 "encode_ms": None if ms is None else round(ms, 1), "encoder_delay_frames": delay}
            matches[name][p["point"]] = sc.last_matches
            res[name].append(p)
            print(f"{name:24s} {p['point']:6s} {p['kbps']:8.1f} kbit/s  det {p['det_map50']:.4f}"
                  f"  psnr {p['psnr']:.2f}  encode {p['encode_ms']} ms  delay {delay} frames",
                  flush=True)
    base = a.settings[0]
    for name in a.settings[1:]:
        det, psn = bd_rate(res[name], res[base], "det_map50"), bd_rate(res[name], res[base], "psnr")
        ci = bd_rate_interval(res[name], res[base], matches[name], matches[base], bd_rate)
        print(f"{name} vs {base}: BD-rate det {det[0]} % (95 % {ci.get('ci95')}, median "
              f"{ci.get('median')}; {det[1]}), psnr {psn[0]} %")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
