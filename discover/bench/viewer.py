"""``python -m discover.bench.viewer``: the viewer sink's human view against the original and
against full-frame x265 at the same total rate (issue 11: fewer than 0.1 objects per frame
the original lacks; PSNR within 1 dB of x265).

::

    frames --CameraAgent.step (the default edge: grounder + tracking, codec, rest schedule)
           --> MQTT payloads: side + task + rest, packet headers included (the total rate)
           --> codec.decompress --> each composer asked --> composed frames
    frames --x265 medium, full frame, one yuv420p stream per CRF--> decoded frames
    NanoDet(original) vs NanoDet(composed | x265 at the CRF nearest our rate) --> extras
    PSNR(original, composed | x265), mean over frames; x265's PSNR at our rate interpolated
    linearly in log rate between its CRF points (no extrapolation)

Extras are NanoDet detections of the judged classes with no original one at IoU >= ``iou``
(discover.bench.ghosts), counted per frame and split into frames that carried a ``rest``
(what the codec itself reconstructs) and the frames between (what the composer makes). The
x265 figure beside ours is the floor: NanoDet invents objects on any compressed frame. The
edge runs once; every composer composes the same decoded frames. Runs in process, no broker.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from discover.bench.ghosts import STRONG, WEAK_SCORE, above, extras, scored
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.errors import DiscoverError
from discover.sdk.rd import psnr

ANCHOR_CRFS = (22, 26, 30, 34, 38, 42)
Scored = list[tuple[str, np.ndarray, float]]


@dataclass
class EdgeRun:
    """What the edge sent for ``frames`` and what the sink's codec decoded of it."""

    kbps: float
    decoded: list[Any] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)
    rest: list[bool] = field(default_factory=list)  #: frame carried rest
    rest_reasons: dict[str, int] = field(default_factory=dict)
    kbps_by: dict[str, float] = field(default_factory=dict)  #: side / task / rest payloads


def edge_run(frames: list[np.ndarray], fps: float, source: str,
             codec: dict[str, Any] | None = None, rest_interval: int | None = None) -> EdgeRun:
    """The default edge (``codec`` overrides the codec section, ``rest_interval`` the
    camera's) on ``frames`` in memory, and the sink's decode of every frame with everything
    sent arriving."""
    from discover.edge.agent import CameraAgent
    from discover.edge.config import CameraConfig, EdgeSection
    from discover.sdk.codecs import CODECS, CodedFrame
    from discover.sdk.transport.broker import BrokerConfig

    cam = CameraConfig(id="viewer", source=source, tasks=["detection"],
                       **({} if rest_interval is None else {"rest_interval": rest_interval}))
    edge = EdgeSection(**({"codec": codec} if codec else {}))
    agent = CameraAgent(cam, edge, BrokerConfig(), "bench")
    agent.source.close()
    sink = CODECS.create(agent.codec.descriptor()["config"])
    h, w = frames[0].shape[:2]
    out, size = EdgeRun(0.0), 0
    try:
        for i, img in enumerate(frames):
            st = agent.step(img, i, 0)
            size += sum(len(p) for _, p in st.messages)
            dec = sink.decompress(CodedFrame.of(st.coded, st.regions, (w, h)))
            out.decoded.append(dec)
            out.infos.append({"frame": i, "regions": st.regions, "meta": agent.meta})
            out.rest.append(bool(dec.has_rest))
    finally:
        agent.close()
    seconds = len(frames) / fps
    out.kbps = size * 8 / 1000 / seconds
    out.kbps_by = {k: round(v * 8 / 1000 / seconds, 2) for k, v in agent.stats.bytes.items()}
    out.rest_reasons = dict(agent.rest.reasons)
    return out


def compose(run: EdgeRun, composer: dict[str, Any]) -> list[np.ndarray]:
    """Every decoded frame of ``run`` through a fresh composer made from ``composer``."""
    from discover.sink.composers import COMPOSERS

    comp = COMPOSERS.create(composer)
    return [comp.compose(d, info) for d, info in zip(run.decoded, run.infos, strict=True)]


def scores(originals: list[np.ndarray], views: list[np.ndarray], ref: list[Scored],
           found: list[Scored], rest: list[bool] | None, iou: float) -> dict[str, Any]:
    """Mean PSNR, extras and misses per frame of ``views`` against the originals (NanoDet's
    scored boxes ``found`` and ``ref``, down to WEAK_SCORE); with ``rest`` flags the extras
    also split on rest frames / between. ``not_even_weak``: extras the original lacks even
    at WEAK_SCORE; misses: original objects the view lacks even at WEAK_SCORE."""
    strong = [(above(r, STRONG), above(f, STRONG)) for r, f in zip(ref, found, strict=True)]
    same = [extras(r, f, iou) for r, f in strong]
    out: dict[str, Any] = {
        "psnr": round(float(np.mean([psnr(o, v) for o, v in zip(originals, views,
                                                                 strict=True)])), 3),
        "extras_per_frame": _mean(same),
        "extras_per_frame_any_class": _mean([extras(r, f, iou, same_class=False)
                                             for r, f in strong]),
        "extras_per_frame_not_even_weak": _mean([
            extras(above(r, WEAK_SCORE), f, iou) for (_, f), r in zip(strong, ref, strict=True)]),
        "misses_per_frame": _mean([extras(above(f, WEAK_SCORE), r, iou)
                                   for (r, _), f in zip(strong, found, strict=True)]),
        "frames_with_extras": int(np.count_nonzero(same))}
    if rest is not None:
        for key, want in (("on_rests", True), ("between_rests", False)):
            part = [n for n, r in zip(same, rest, strict=True) if r == want]
            out[f"extras_per_frame_{key}"] = _mean(part) if part else None
    return out


def _mean(values: list[int]) -> float:
    return round(float(np.mean(values)), 3)


def anchor_curve(frames: list[np.ndarray], fps: float,
                 crfs: tuple[int, ...] = ANCHOR_CRFS) -> list[dict[str, Any]]:
    """Full-frame x265 (medium, yuv420p) at each CRF: rate, mean PSNR, the decoded frames."""
    from discover.bench.tasks import code_video

    curve = []
    for crf in crfs:
        size, dec = code_video(frames, fps, "libx265", crf, ("hevc",))
        curve.append({"crf": crf, "kbps": size * 8 / 1000 / (len(frames) / fps),
                      "psnr": float(np.mean([psnr(o, d) for o, d in zip(frames, dec,
                                                                         strict=True)])),
                      "frames": dec})
    return curve


def psnr_at(curve: list[dict[str, Any]], kbps: float) -> float | None:
    """The anchor's PSNR at ``kbps``, linear in log rate between its two nearest points;
    None outside the measured range."""
    pts = sorted((math.log(c["kbps"]), c["psnr"]) for c in curve)
    x = math.log(kbps)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def run(source: str = str(SAMPLE_CLIP), start: int = 0, max_frames: int | None = 100,
        composers: list[dict[str, Any]] | None = None, codec: dict[str, Any] | None = None,
        rest_interval: int | None = None, crfs: tuple[int, ...] = ANCHOR_CRFS,
        iou: float = 0.3) -> dict[str, Any]:
    """The figures of the module docstring for each composer, and x265's beside them."""
    from discover.bench.ground import load_frames
    from discover.sink.tasks import TASK_MODELS

    composers = composers or [{"type": "background"}]
    frames, fps = load_frames(source, start, max_frames)
    edge = edge_run(frames, fps, source, codec, rest_interval)
    model = TASK_MODELS.create({"type": "nanodet", "score_threshold": WEAK_SCORE})
    ref = [scored(model, f) for f in frames]
    curve = anchor_curve(frames, fps, crfs)
    near = min(curve, key=lambda c: abs(math.log(c["kbps"] / edge.kbps)))
    anchor_psnr = psnr_at(curve, edge.kbps)
    result: dict[str, Any] = {
        "source": source, "start": start, "frames": len(frames), "fps": fps,
        "kbps": round(edge.kbps, 2), "kbps_payloads": edge.kbps_by,
        "rests": int(sum(edge.rest)),
        "rest_reasons": edge.rest_reasons,
        "x265": {"curve": [{"crf": c["crf"], "kbps": round(c["kbps"], 2),
                            "psnr": round(c["psnr"], 3)} for c in curve],
                 "psnr_at_our_rate": None if anchor_psnr is None else round(anchor_psnr, 3),
                 "nearest": {"crf": near["crf"], "kbps": round(near["kbps"], 2),
                             **scores(frames, near["frames"], ref,
                                      [scored(model, f) for f in near["frames"]], None, iou)}},
        "composers": {}}
    for cfg in composers:
        views = compose(edge, cfg)
        s = scores(frames, views, ref, [scored(model, v) for v in views], edge.rest, iou)
        if anchor_psnr is not None:
            s["psnr_vs_x265_db"] = round(s["psnr"] - anchor_psnr, 3)
        result["composers"][json.dumps(cfg, sort_keys=True)] = s
    return result


def _composer(text: str) -> dict[str, Any]:
    """A composer key (``background``) or its config as a JSON object."""
    if not text.lstrip().startswith("{"):
        return {"type": text}
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not a JSON object: {e}") from None
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise argparse.ArgumentTypeError("a composer config needs a 'type'")
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m discover.bench.viewer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(SAMPLE_CLIP), help="video (default: bundled clip)")
    p.add_argument("--start", type=int, default=0, help="first frame (evaluation: 500 of "
                   "vtest.avi; 0-499 are for development)")
    p.add_argument("--max-frames", type=int, default=100)
    p.add_argument("--composer", type=_composer, action="append", help="a composer key or "
                   "its config as JSON; repeat to compare (default: background)")
    p.add_argument("--codec", type=_composer, help="edge codec config as JSON (default: the "
                   "edge's default codec)")
    p.add_argument("--rest-interval", type=int, help="the camera's rest_interval (default: "
                   "the edge's, 10; 0: no rest, the view is the machine view)")
    p.add_argument("--iou", type=float, default=0.3)
    p.add_argument("--json", action="store_true", help="one JSON line (default: indented)")
    a = p.parse_args(argv)
    try:
        res = run(a.source, a.start, a.max_frames, a.composer, a.codec, a.rest_interval,
                  iou=a.iou)
    except DiscoverError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res) if a.json else json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
