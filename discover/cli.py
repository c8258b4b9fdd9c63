"""``discover``: the one console script (DESIGN §3).

Every subcommand takes ``--config FILE``, ``--set key.path=value`` and ``--json`` (one-line JSON
summary on stdout). Errors a user can cause print one ``error:`` line and exit 2; ``--debug``
shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from discover.sdk.errors import DiscoverError
from discover.sdk.security import load_key

log = logging.getLogger("discover")
Handler = Callable[[argparse.Namespace], dict[str, Any]]


# -- shared plumbing --------------------------------------------------------------------------

def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--config", type=Path, help="deployment YAML file")
    g.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set edge.codec.quality=60 (repeatable)")
    g.add_argument("--broker", help="broker URL, e.g. mqtt://127.0.0.1:1883 (broker.url)")
    g.add_argument("--prefix", help="topic prefix (default: discover)")
    g.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def load_deployment(a: argparse.Namespace, extra: dict[str, Any] | None = None):  # noqa: ANN201
    from discover.config import Deployment
    from discover.sdk.config import load_config

    overrides = {"broker.url": a.broker, "prefix": a.prefix,
                 "security.key_file": getattr(a, "key_file", None), **(extra or {})}
    return load_config(Deployment, a.config, a.sets, overrides)


def _progress(a: argparse.Namespace, label: str):  # noqa: ANN202
    from discover.progress import Progress

    return Progress(label, enabled=not a.quiet)


# -- subcommands ------------------------------------------------------------------------------

def cmd_edge(a: argparse.Namespace) -> dict[str, Any]:
    from discover.edge.agent import run_edge

    # these are set on the validated cameras below, so check them here
    if a.max_frames is not None and a.max_frames < 1:
        raise DiscoverError(f"--max-frames must be at least 1 (got {a.max_frames})")
    if a.rest_interval is not None and a.rest_interval < 0:
        raise DiscoverError(f"--rest-interval must be 0 (never) or more (got {a.rest_interval})")
    if a.rest_on_change is not None and not 0 <= a.rest_on_change <= 1:
        raise DiscoverError(f"--rest-on-change is a share between 0 (off) and 1 "
                            f"(got {a.rest_on_change:g})")
    extra: dict[str, Any] = {}
    if a.source:
        extra["edge.cameras"] = [{"id": a.camera or "cam0", "source": a.source,
                                  "tasks": a.task or ["detection"]}]
    if a.grounder:
        extra["edge.grounder"] = {"type": a.grounder}
    if a.codec:
        extra["edge.codec"] = {"type": a.codec}
    if a.metrics:
        extra["edge.metrics"] = a.metrics
    dep = load_deployment(a, extra)
    if dep.edge.metrics and not a.quiet:
        from discover.sdk.telemetry import parse_listen

        host, port = parse_listen(dep.edge.metrics, "edge.metrics")
        print(f"metrics: http://{host}:{port}/metrics", file=sys.stderr)
    for cam in dep.edge.cameras:
        if not a.source and a.task:
            cam.tasks = a.task
        if a.max_frames is not None:
            cam.max_frames = a.max_frames
        if a.realtime:
            cam.realtime = True
        if a.rest_interval is not None:
            cam.rest_interval = a.rest_interval
        if a.rest_on_change is not None:
            cam.rest_on_change = a.rest_on_change
    prog = _progress(a, "edge")
    counts: dict[str, int] = {}

    def on_frame(cam: str, index: int) -> None:
        counts[cam] = index + 1
        prog.update(lambda: ", ".join(f"{c}: {n} frames" for c, n in counts.items()))

    timings = open(a.timings, "w") if a.timings else None  # noqa: SIM115
    try:
        summaries = run_edge(dep.edge, dep.broker, dep.prefix, timings=timings, on_frame=on_frame,
                             key=load_key(dep.security.key_file))
    finally:
        prog.done()
        if timings:
            timings.close()
    if len(summaries) == 1:
        return summaries[0]
    return {"cameras": summaries, "frames": sum(s["frames"] for s in summaries),
            "dropped": sum(s["dropped"] for s in summaries),
            "bytes": sum(s["bytes"] for s in summaries)}


def _sink_overrides(a: argparse.Namespace) -> dict[str, Any]:
    return {"sink.camera": a.camera, "sink.tasks": a.task, "sink.out": a.out,
            "sink.composer": {"type": a.composer} if a.composer else None,
            "sink.rest": True if a.rest else None, "sink.output": a.output,
            "sink.max_frames": a.max_frames, "sink.idle_timeout_s": a.idle_timeout,
            "sink.shard": a.shard, "sink.frame_timeout_s": a.frame_timeout}


def _add_sink_args(p: argparse.ArgumentParser, camera: bool = True) -> None:
    if camera:
        p.add_argument("--camera", help="camera id or + for all (sink.camera)")
    p.add_argument("--task", action="append", help="task substream to take (repeatable)")
    p.add_argument("--out", type=Path, help="folder for frames and results")
    p.add_argument("--composer", help="composer backend (sink.composer.type), e.g. direct")
    p.add_argument("--rest", action="store_true", help="also take the rest substream")
    p.add_argument("--output", choices=["png", "mp4", "none"], help="how frames are written")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--idle-timeout", type=float, help="stop after S seconds without data")
    p.add_argument("--frame-timeout", type=float, help="seconds to wait for a frame's substreams")
    p.add_argument("--shard", help="I/N: take the cameras hashing to I of N workers")


def _add_key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", type=Path, help="stream key (security.key_file): sign what is "
                   "sent, take only streams signed with it (docs/security.md)")


def _frame_progress(a: argparse.Namespace, label: str):  # noqa: ANN202
    prog = _progress(a, label)
    count = [0]

    def on_frame(cam: str, index: int, image: Any) -> None:
        count[0] += 1
        prog.update(f"{count[0]} frames (last: {cam} #{index})")

    return prog, on_frame


def cmd_sink(a: argparse.Namespace) -> dict[str, Any]:
    from discover.sink.runner import run_sink

    dep = load_deployment(a, {**_sink_overrides(a), "sink.http.listen": a.http})
    live = None
    if dep.sink.http.listen is not None:
        from discover.sink.http.server import LiveServer

        live = LiveServer.from_config(dep.sink.http).start()
        print(f"web view: {live.url} (metrics: {live.url}metrics)", file=sys.stderr)
    prog, on_frame = _frame_progress(a, "sink")
    timings = open(a.timings, "w") if a.timings else None  # noqa: SIM115
    try:
        return run_sink(dep.sink, dep.broker, dep.prefix, timings=timings, on_frame=on_frame,
                        live=live, key=load_key(dep.security.key_file))
    finally:
        prog.done()
        if timings:
            timings.close()
        if live is not None:
            live.stop()


def cmd_record(a: argparse.Namespace) -> dict[str, Any]:
    from discover.replay import record

    dep = load_deployment(a)
    prog = _progress(a, "record")
    try:
        return record(dep.broker, dep.prefix, a.camera, a.out, idle_timeout_s=a.idle_timeout,
                      duration_s=a.duration, key=load_key(dep.security.key_file),
                      progress=lambda n, b: prog.update(f"{n} messages, {b / 1e6:.2f} MB"))
    finally:
        prog.done()


def cmd_replay(a: argparse.Namespace) -> dict[str, Any]:
    from discover.replay import replay_to_broker, replay_to_sink
    from discover.sdk.recording import read_recording

    next(iter(read_recording(a.file)), None)  # fail early on a file that is not a recording
    if not a.asap and a.speed <= 0:
        raise DiscoverError(f"--speed must be above 0 (got {a.speed:g}); use --asap for as fast "
                            "as possible")
    speed = None if a.asap else a.speed
    if a.sink:
        if a.broker:
            raise DiscoverError("replay takes --broker URL or --sink, not both")
        dep = load_deployment(a, _sink_overrides(a))
        prog, on_frame = _frame_progress(a, "replay")
        try:
            return replay_to_sink(a.file, dep.sink, dep.prefix, speed=speed, on_frame=on_frame,
                                  key=load_key(dep.security.key_file))
        finally:
            prog.done()
    if not a.broker and not a.config:
        raise DiscoverError("replay needs a target: --broker URL, or --sink --task T --out DIR")
    dep = load_deployment(a)
    prog = _progress(a, "replay")
    try:
        return replay_to_broker(a.file, dep.broker, speed=speed,
                                progress=lambda n: prog.update(f"{n} messages"),
                                key=load_key(dep.security.key_file), prefix=dep.prefix)
    finally:
        prog.done()


def cmd_demo(a: argparse.Namespace) -> dict[str, Any]:
    from discover.demo import run_demo

    dep = load_deployment(a)  # the demo honours edge.grounder / edge.codec settings
    return run_demo(out=a.out, max_frames=a.max_frames, broker_url=a.broker,
                    broker_kind=a.local_broker, quiet=a.quiet, grounder=dep.edge.grounder,
                    codec=dep.edge.codec, serve=a.http if a.serve else None)


def cmd_profile(a: argparse.Namespace) -> dict[str, Any]:
    from discover.sdk.profile_maker import get_or_make_profile, profile_path

    path = profile_path(a.task, a.out)
    cached = path.is_file() and not a.force
    p = get_or_make_profile(a.task, a.description, force=a.force, out=a.out, model=a.model)
    return {"task": p.task, "labels": len(p.labels), "path": str(p.path), "cached": cached,
            "made_by": p.made_by.get("method"), "model": p.made_by.get("model")}


def cmd_train(a: argparse.Namespace) -> dict[str, Any]:
    """``discover train codec|control ...``: the options are discover/train/<what>.py's own."""
    if a.what == "control":
        from discover.train.control import main as train_control

        raise SystemExit(train_control(a.args))
    from discover.train.codec import main as train_codec

    raise SystemExit(train_codec(a.args))


def cmd_export(a: argparse.Namespace) -> dict[str, Any]:
    """``discover export codec ...``: the options are discover/train/export_onnx.py's own."""
    from discover.train.export_onnx import main as export_codec

    raise SystemExit(export_codec(a.args))


def cmd_config(a: argparse.Namespace) -> dict[str, Any]:
    from discover.config import Deployment

    if a.schema:
        print(json.dumps(Deployment.model_json_schema(), indent=2))
        return {}
    dep = load_deployment(a)
    print(json.dumps(dep.model_dump(mode="json"), indent=2))
    return {}


def cmd_ground(a: argparse.Namespace) -> dict[str, Any]:
    from discover.ground import ground_image, ground_video

    extra = {"edge.grounder": {"type": a.grounder}} if a.grounder else {}
    dep = load_deployment(a, extra)
    tasks = a.task or ["detection"]
    if a.labels:
        from discover.ground import label_coverage

        report = label_coverage(tasks, dep.edge.grounder)
        if not a.json:
            print(json.dumps(report, indent=2))
            return {}
        return report
    if a.image is not None:
        return ground_image(a.image, tasks, dep.edge.grounder, a.annotate)
    prog = _progress(a, "ground")
    try:
        return ground_video(a.source, tasks, dep.edge.grounder, dep.edge.tracking, a.max_frames,
                            a.annotate, a.annotate_frame,
                            progress=lambda n: prog.update(f"{n} frames"))
    finally:
        prog.done()


def cmd_bench(a: argparse.Namespace) -> dict[str, Any]:
    from discover.bench.stream import run_bench_stream

    if a.what == "codec":
        from discover.bench.codec import run_bench_codec

        if a.source:
            raise DiscoverError("bench codec takes --images DIR and --video FILE, not --source")
        return run_bench_codec(images=a.images, boxes=a.boxes, video=a.video,
                               max_frames=a.max_frames, checkpoint=a.checkpoint,
                               out=a.out or Path("out/bench-codec"), quiet=a.quiet,
                               grounder=a.grounder or "nanodet")
    out = a.out or Path("out/bench")
    if a.what == "ground":
        from discover.bench.ground import run_bench_ground

        return run_bench_ground(source=a.source, max_frames=a.max_frames, out=out,
                                start=a.start, quiet=a.quiet)
    if a.what == "tasks":
        from discover.bench.tasks import run_bench_tasks

        codec = a.codec or "learned"  # the codec's options: --config / --set edge.codec.*
        options = load_deployment(a, {"edge.codec": {"type": codec}}).edge.codec
        return run_bench_tasks(source=a.source, max_frames=a.max_frames, out=out,
                               quiet=a.quiet, codec=codec,
                               codec_options=options.model_dump(exclude_defaults=True),
                               checkpoint=a.checkpoint, start=a.start,
                               tasks=a.tasks.split(","), annotations=a.annotations,
                               perceptual=_perceptual(a.perceptual),
                               ours_settings=a.ours.split(","), bootstrap=a.bootstrap,
                               classes=[c for c in (a.classes or "").split(",") if c])
    if a.what == "diffusion":
        from discover.bench.diffusion import run_bench_diffusion

        return run_bench_diffusion(
            base=a.base, controlnet=a.controlnet, inpaint=a.inpaint,
            random_weights=a.random_weights, source=a.source,
            frames=a.frames if a.frames is not None else a.max_frames or 3, size=a.size,
            composers=a.composers, steps=a.steps, device=a.device, dtype=a.dtype,
            max_seconds=a.max_seconds, checkpoint=a.checkpoint, out=out, quiet=a.quiet)
    if a.what != "stream":
        raise DiscoverError(f"unknown benchmark {a.what!r}; available: stream, ground, tasks, "
                            "codec, diffusion")
    return run_bench_stream(source=a.source, max_frames=a.max_frames, out=out,
                            broker_url=a.broker, quiet=a.quiet, grounder=a.grounder,
                            codec=a.codec, sets=a.sets)


def _perceptual(spec: str) -> tuple[str, ...]:
    """``--perceptual``: 'none' or a comma-separated subset of fid, kid, lpips, dists."""
    from discover.bench.tasks import PERCEPTUAL

    names = tuple(dict.fromkeys(m.strip() for m in spec.split(",") if m.strip()))
    if names in ((), ("none",)):
        return ()
    bad = [m for m in names if m not in PERCEPTUAL]
    if bad:
        raise DiscoverError(f"--perceptual takes 'none' or a comma-separated subset of "
                            f"{','.join(PERCEPTUAL)} (got {','.join(bad)})")
    return names


# -- parser -----------------------------------------------------------------------------------

Sub = Any  # argparse's sub-parsers action (a private class)


def _add_run_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    """demo, edge, sink: running the product."""
    d = sub.add_parser("demo", parents=[common], help="broker + edge + sinks on the sample clip")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    d.add_argument("--max-frames", type=int, default=None,
                   help="frames of the clip to use (default 30; the clip has 100)")
    d.add_argument("--local-broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    d.add_argument("--serve", action="store_true", help="serve the sinks' live web view while "
                   "the demo runs and afterwards, until Ctrl-C (prints the URLs)")
    d.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT", help="--serve: "
                   "the viewer sink's address; the detection sink takes the next port "
                   "(default 127.0.0.1:8080)")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("edge", parents=[common], help="run the edge agent")
    e.add_argument("--source", help="video file, RTSP/HTTP URL, webcam index or image folder")
    _add_key_arg(e)
    e.add_argument("--camera", help="camera id (default cam0)")
    e.add_argument("--task", action="append", help="task to serve (repeatable)")
    e.add_argument("--max-frames", type=int)
    e.add_argument("--realtime", action="store_true", help="pace files at their frame rate")
    e.add_argument("--rest-interval", type=int, help="send rest every N frames (0: never)")
    e.add_argument("--rest-on-change", type=float, metavar="SHARE",
                   help="also send rest when this share of the background changed (0: off)")
    e.add_argument("--grounder", help="grounder backend (edge.grounder.type)")
    e.add_argument("--codec", help="codec backend (edge.codec.type)")
    e.add_argument("--timings", type=Path, help="write per-frame timings (JSON lines)")
    e.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics here while "
                   "running; a bare PORT binds 127.0.0.1 (edge.metrics)")
    e.set_defaults(func=cmd_edge)

    s = sub.add_parser("sink", parents=[common], help="run a sink worker")
    _add_sink_args(s)
    _add_key_arg(s)
    s.add_argument("--timings", type=Path, help="write per-frame timings (JSON lines)")
    s.add_argument("--http", metavar="HOST:PORT", help="serve the live web view, /api, /metrics "
                   "and the HLS restream here; a bare PORT binds 127.0.0.1 (sink.http.listen)")
    s.set_defaults(func=cmd_sink)


def _add_recording_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    """record, replay: a camera's stream to a file and back."""
    r = sub.add_parser("record", parents=[common], help="record a camera's stream to a file")
    r.add_argument("--camera", required=True, help="camera id or + for all")
    _add_key_arg(r)
    r.add_argument("--out", type=Path, required=True, help="recording file to write")
    r.add_argument("--idle-timeout", type=float, help="stop after S seconds without messages")
    r.add_argument("--duration", type=float, help="stop after S seconds")
    r.set_defaults(func=cmd_record)

    rp = sub.add_parser("replay", parents=[common], help="replay a recording")
    rp.add_argument("file", type=Path)
    rp.add_argument("--speed", type=float, default=1.0, help="pace factor (default 1: original)")
    rp.add_argument("--asap", action="store_true", help="as fast as possible")
    rp.add_argument("--sink", action="store_true", help="feed a sink in-process, no broker")
    _add_sink_args(rp)
    _add_key_arg(rp)
    rp.set_defaults(func=cmd_replay)


def _add_model_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    """profile, train, export: making the labels and models the product runs."""
    pf = sub.add_parser("profile", parents=[common],
                        help="make a task's label list with GPT-4o (once; cached on disk)")
    pf.add_argument("--task", required=True, help="task name, e.g. detection")
    pf.add_argument("--description", help="what the task needs (default: the model writes one)")
    pf.add_argument("--model", default="gpt-4o", help="chat model (default gpt-4o)")
    pf.add_argument("--out", type=Path, help="file or folder (default configs/profiles/)")
    pf.add_argument("--force", action="store_true", help="ask the model even if cached")
    pf.set_defaults(func=cmd_profile)

    tr = sub.add_parser("train", help="train the learned codec or the diffusion composer's "
                                      "control module (discover train codec|control --help)")
    tr.add_argument("what", choices=["codec", "control"])
    tr.add_argument("args", nargs=argparse.REMAINDER,
                    help="options of discover/train/codec.py or discover/train/control.py")
    tr.set_defaults(func=cmd_train, quiet=False, verbose=0, debug=False, json=False)
    ex = sub.add_parser("export", help="export the learned codec's edge half to ONNX "
                                       "(discover export codec --help)")
    ex.add_argument("what", choices=["codec"])
    ex.add_argument("args", nargs=argparse.REMAINDER, help="options of discover/train/export_onnx.py")
    ex.set_defaults(func=cmd_export, quiet=False, verbose=0, debug=False, json=False)


def _add_inspect_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    """config, ground: what the configuration is and what the grounder finds."""
    c = sub.add_parser("config", parents=[common], help="show the effective config or its schema")
    c.add_argument("--schema", action="store_true", help="print the JSON schema")
    c.set_defaults(func=cmd_config)

    g = sub.add_parser("ground", parents=[common],
                       help="boxes a task's labels find in an image or video (JSON + picture)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, help="image file")
    src.add_argument("--source", help="video file, URL, webcam index or image folder")
    src.add_argument("--labels", action="store_true", help="list which profile labels the "
                     "grounder can find (the detector class of each) and which it cannot")
    g.add_argument("--task", action="append", help="task profile (repeatable; default detection)")
    g.add_argument("--grounder", help="grounder backend (edge.grounder.type)")
    g.add_argument("--max-frames", type=int, help="video: stop after N frames")
    g.add_argument("--annotate", type=Path, metavar="OUT.png", help="write the boxes drawn on "
                   "the image (video: on the last frame, or --annotate-frame)")
    g.add_argument("--annotate-frame", type=int, metavar="I", help="video: frame to annotate")
    g.set_defaults(func=cmd_ground)


def _add_bench_command(sub: Sub, common: argparse.ArgumentParser) -> None:
    """bench: the options every benchmark or several take; codec and diffusion in groups."""
    b = sub.add_parser("bench", parents=[common],
                       help="benchmarks (stream, ground, tasks, codec, diffusion)")
    b.add_argument("what", choices=["stream", "ground", "tasks", "codec", "diffusion"])
    b.add_argument("--grounder", help="stream: the edge's grounder (default: the configured "
                   "one); codec: the grounder for the task boxes (default: nanodet)")
    b.add_argument("--source", help="video or image folder (default: the bundled sample clip)")
    b.add_argument("--max-frames", type=int)
    b.add_argument("--start", type=int, default=0, help="ground, tasks: first frame of the source "
                   "(vtest.avi's evaluation split starts at 500)")
    b.add_argument("--out", type=Path, default=None,
                   help="output folder (default: out/bench; codec: out/bench-codec)")
    b.add_argument("--codec", choices=["classical", "learned", "video"], default=None,
                   help="stream: the edge's codec (default: the configured one); tasks: the "
                        "codec of 'ours' (default learned: every rate point of the checkpoint, "
                        "temporal prediction on; classical: WebP q30-90)")
    b.add_argument("--tasks", default="det,cls,seg", help="tasks: task models scored on every "
                   "decoded frame, comma-separated of det, cls, seg (default: all three)")
    b.add_argument("--annotations", type=Path, metavar="COCO.json", help="tasks: score "
                   "detection against these COCO-format boxes instead of NanoDet on the "
                   "originals (images matched to frames by frame_id or file name)")
    b.add_argument("--ours", default="ours_task,ours_full,ours_bg", help="tasks: which of "
                   "ours to run, comma-separated (ours_task alone: the task-stream figure, "
                   "about a third of the time)")
    b.add_argument("--classes", metavar="C,C", help="tasks: score detection on these classes "
                   "only, comma-separated (e.g. person; default: every class with at least 20 "
                   "reference boxes)")
    b.add_argument("--bootstrap", type=int, default=200, metavar="N", help="tasks: bootstrap "
                   "draws over frames for the detection BD-rates' 95 %% intervals (0: none)")
    b.add_argument("--perceptual", default="fid,kid,lpips,dists", help="tasks: perceptual "
                   "distances to the originals, comma-separated, or 'none'; each needs its "
                   "pretrained backbone in the torch hub cache (python -m discover.bench.perceptual "
                   "--fetch), skipped with a note otherwise")
    bc = b.add_argument_group("codec options")
    bc.add_argument("--images", type=Path, help="codec: folder of images (default: the "
                    "held-out OpenCV photos, from apt-get install opencv-doc)")
    bc.add_argument("--boxes", type=Path, help='codec: JSON {"image.jpg": [[x0, y0, x1, y1], '
                    "...]} task boxes per image (default: found by the grounder)")
    bc.add_argument("--video", help="codec: also code this video's frames in order (with "
                    "--max-frames N), against x264 and x265")
    bc.add_argument("--checkpoint", type=Path, help="codec, tasks, diffusion: learned-codec "
                    "checkpoint folder (default: the shipped sdk/codecs/learned/checkpoints/small)")
    _add_bench_diffusion_args(b)
    b.set_defaults(func=cmd_bench)


def _add_bench_diffusion_args(b: argparse.ArgumentParser) -> None:
    """bench diffusion's options, in their own help group."""
    bd = b.add_argument_group("diffusion options (sink throughput of the Stable Diffusion "
                              "composers; discover/bench/diffusion.py)")
    bd.add_argument("--base", help="SD 2.1-base folder (diffusers layout)")
    bd.add_argument("--controlnet", help="control module folder for 'diffusion' "
                    "(discover/train/control.py)")
    bd.add_argument("--inpaint", help="SD 2 inpainting folder for 'sd-inpaint' (default: "
                    "--base, blended)")
    bd.add_argument("--random-weights", type=Path, nargs="?", const=Path("out/sd21-random"),
                    metavar="DIR", help="instead of --base: SD 2.1-base's architecture with "
                    "random weights, written to DIR once (default out/sd21-random, ~5 GB): real "
                    "timings, meaningless images")
    bd.add_argument("--frames", type=int, help="frames of the clip (default 3; the first is "
                    "the warm-up)")
    bd.add_argument("--size", type=int, default=512, help="square frame size in pixels "
                    "(default 512)")
    bd.add_argument("--composers", default="direct,background,diffusion,sd-inpaint",
                    help="comma-separated composers to time (default: "
                         "direct,background,diffusion,sd-inpaint)")
    bd.add_argument("--steps", default="8,50", help="denoising step counts for diffusion and "
                    "sd-inpaint, comma-separated (default 8,50)")
    bd.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where Stable Diffusion runs (auto: cuda if available)")
    bd.add_argument("--dtype", choices=["auto", "float32", "float16"], default="auto",
                    help="Stable Diffusion precision (auto: float16 on cuda, float32 on cpu)")
    bd.add_argument("--max-seconds", type=float, help="per configuration: do not start a "
                    "frame that would end past this many seconds (the result says so)")


def build_parser() -> argparse.ArgumentParser:
    """The ``discover`` command line: one sub-command per job, grouped as the README lists them."""
    common = _common()
    p = argparse.ArgumentParser(
        prog="discover",
        description="DISCOVER edge-camera SDK: send only what the task needs.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run_commands(sub, common)
    _add_recording_commands(sub, common)
    _add_model_commands(sub, common)
    _add_inspect_commands(sub, common)
    _add_bench_command(sub, common)
    return p


def _print_human(summary: dict[str, Any]) -> None:
    for k, v in summary.items():
        if isinstance(v, dict | list) and not v:
            continue
        print(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(a.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not a.debug:
        def quiet_hook(args: threading.ExceptHookArgs) -> None:
            log.error("thread %s failed: %s: %s", getattr(args.thread, "name", "?"),
                      args.exc_type.__name__, args.exc_value)
        threading.excepthook = quiet_hook
    try:
        summary = a.func(a)
    except DiscoverError as e:
        if a.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the one place an unexpected error becomes a line, not a traceback
        if a.debug:
            raise
        print(f"error: internal error ({type(e).__name__}: {e}); rerun with --debug and "
              "report it", file=sys.stderr)
        return 1
    if summary:
        summary["peak_rss_mb"] = peak_rss_mb()
        if a.json:
            print(json.dumps(summary, separators=(",", ":")))
        else:
            _print_human(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
