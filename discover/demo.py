"""``discover demo``: the whole product on one machine with no setup.

::

    local broker (Mosquitto if installed, else amqtt in-process)
      edge "street" on the bundled clip: nanodet grounder (every 3rd frame, tracked between),
        video codec (HEVC; the defaults) -> side + task/detection every frame, rest every
        10th frame (and on a background change)
      sink "detection": side + task/detection only (never receives rest)
      sink "viewer":    side + task/detection + rest, background composer (the regions of
                        every frame on the latest decoded rest)
    -> out/demo/{detection,viewer}/street/frames/*.png, results/*.json, preview.png, summary.json
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from discover.broker import LocalBroker
from discover.edge.agent import run_edge
from discover.edge.config import CameraConfig, EdgeSection
from discover.edge.sources import open_source
from discover.progress import Progress
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.errors import DiscoverError
from discover.sdk.transport.broker import BrokerConfig
from discover.sink.config import SinkSection
from discover.sink.runner import run_sink

CAMERA = "street"
PREFIX = "discover"


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 26), (0, 0, 0), -1)
    cv2.putText(out, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


def preview(original: dict[int, np.ndarray], task_only: dict[int, np.ndarray],
            full: dict[int, np.ndarray], boxes: dict[int, list], path: Path,
            rest_interval: int) -> None:
    """Rows of [original with the sent boxes | side+task only | with rest] at half size
    (``rest_interval`` 0: the edge sent no rest)."""
    rows = []
    for i in sorted(set(original) & set(task_only) & set(full)):
        o = original[i].copy()
        for b in boxes.get(i, []):
            cv2.rectangle(o, tuple(b[:2]), tuple(b[2:]), (0, 255, 0), 2)
        view = ("viewer sink: the machine view (no rest needed)" if rest_interval == 0
                else "+ rest (viewer sink)" if i % rest_interval == 0
                else f"viewer sink: regions on the rest of frame {i - i % rest_interval}")
        cells = [_label(o, f"frame {i}: original, boxes sent"),
                 _label(task_only[i], "side + task/detection (detection sink)"),
                 _label(full[i], view)]
        rows.append(np.hstack([cv2.resize(c, (c.shape[1] // 2, c.shape[0] // 2),
                                          interpolation=cv2.INTER_AREA) for c in cells]))
    if rows:
        cv2.imwrite(str(path), np.vstack(rows))


#: frames the demo codes unless told otherwise: 3 s of the clip (the learned codec, still
#: selectable with --codec learned, runs at a few frames per second on a 2-core CPU)
DEMO_FRAMES = 30


def run_demo(out: Path = Path("out/demo"), max_frames: int | None = None,
             broker_url: str | None = None, broker_kind: str = "auto",
             quiet: bool = False, grounder: Any = None, codec: Any = None,
             serve: str | None = None) -> dict[str, Any]:
    """Run the demo; ``serve`` (HOST:PORT) also serves the sinks' web view (viewer on that
    port, detection on the next) during the run and afterwards until Ctrl-C."""
    if not SAMPLE_CLIP.is_file():
        raise DiscoverError(f"sample clip {SAMPLE_CLIP} is missing; restore it with "
                            "'git checkout sdk/assets/sample' or 'python tools/make_sample_clip.py'")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    src = open_source(str(SAMPLE_CLIP))
    n_total = sum(1 for _ in src.frames())
    src.close()
    n = min(n_total, max_frames or DEMO_FRAMES)
    rest_interval = 10
    picks = {n // 4 + 1, n // 2 - n // 2 % rest_interval, (3 * n) // 4 + 1}
    local = None if broker_url else LocalBroker(broker_kind).start()
    broker = BrokerConfig(url=broker_url or local.url)
    prog = Progress("demo", enabled=not quiet)
    grabbed: dict[str, dict[int, np.ndarray]] = {"detection": {}, "viewer": {}}
    results: dict[str, dict] = {}
    errors: list[BaseException] = []
    lives = _start_web_views(serve) if serve else {}
    try:
        # the sinks stop after n frames; the idle timeout only ends them if frames were lost,
        # and must outlast the edge's start-up (loading the grounder and the codec)
        sinks = {
            "detection": SinkSection(camera=CAMERA, tasks=["detection"], rest=False,
                                     out=out / "detection", max_frames=n, idle_timeout_s=30.0),
            "viewer": SinkSection(camera=CAMERA, tasks=["detection"], rest=True,
                                  composer={"type": "background"}, out=out / "viewer",
                                  max_frames=n, idle_timeout_s=30.0),
        }
        threads = []
        for name, section in sinks.items():
            ready = threading.Event()

            def work(name: str = name, section: SinkSection = section,
                     ready: threading.Event = ready) -> None:
                def keep(cam: str, i: int, img: np.ndarray) -> None:
                    if i in picks:
                        grabbed[name][i] = img.copy()
                try:
                    results[name] = run_sink(section, broker, PREFIX, ready=ready, on_frame=keep,
                                             live=lives.get(name))
                except BaseException as e:
                    errors.append(e)
                    ready.set()

            t = threading.Thread(target=work, name=f"sink-{name}", daemon=True)
            t.start()
            ready.wait(30)
            threads.append(t)
        if errors:
            raise errors[0]
        edge = EdgeSection(cameras=[CameraConfig(id=CAMERA, source=str(SAMPLE_CLIP),
                                                 tasks=["detection"], rest_interval=rest_interval,
                                                 max_frames=n, realtime=bool(serve))])
        if grounder is not None:
            edge.grounder = grounder
        if codec is not None:
            edge.codec = codec
        edge_summary = run_edge(edge, broker, PREFIX,
                                on_frame=lambda c, i: prog.update(f"edge {i + 1}/{n} frames"))[0]
        for t in threads:
            while t.is_alive():
                t.join(0.2)
                done = sum(1 for _ in (out / "viewer" / CAMERA / "results").glob("*.json")) \
                    if (out / "viewer" / CAMERA / "results").is_dir() else 0
                prog.update(f"sinks decoding, viewer at {done}/{n}")
        prog.done()
        if errors:
            raise errors[0]
    finally:
        if local is not None:
            local.stop()

    originals: dict[int, np.ndarray] = {}
    src = open_source(str(SAMPLE_CLIP))
    for i, img in enumerate(src.frames()):
        if i in picks:
            originals[i] = img
    src.close()
    boxes = {}
    for i in picks:
        f = out / "detection" / CAMERA / "results" / f"{i:06d}.json"
        if f.is_file():
            boxes[i] = [r["box"] for r in json.loads(f.read_text())["regions"]]
    sent_rest = edge_summary["bytes_by_substream"].get("rest", 0) > 0
    preview(originals, grabbed["detection"], grabbed["viewer"], boxes, out / "preview.png",
            rest_interval if sent_rest else 0)
    det, view = results["detection"], results["viewer"]
    summary = {
        "frames": edge_summary["frames"],
        "frames_detection_sink": det["frames"],
        "frames_viewer_sink": view["frames"],
        "dropped": edge_summary["dropped"] + det["dropped"] + view["dropped"],
        "width": src.width, "height": src.height, "fps_source": round(src.fps, 2),
        "bpp_task": det["bpp"], "kbps_task": det["kbps"],
        "bpp_full": view["bpp"], "kbps_full": view["kbps"],
        "bytes_by_substream": edge_summary["bytes_by_substream"],
        "task_region_share": edge_summary["task_area_share"],
        "regions_per_frame": edge_summary["regions_per_frame"],
        "fps_edge": edge_summary["fps"], "fps_sink": det["fps"],
        "latency_ms_p50": det["latency_ms_p50"],
        "grounder": edge.grounder.type, "codec": edge.codec.type,
        "codec_config": edge.codec.model_dump(mode="json"),
        "grounded_frames": edge_summary["grounded_frames"],
        "encode_ms": edge_summary["encode_ms"], "ground_ms": edge_summary["ground_ms"],
        "broker": local.kind if local is not None else broker.describe(),
        "seconds": round(time.monotonic() - t_start, 2),
        "out": str(out), "preview": str(out / "preview.png"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if lives:
        _serve_until_interrupted(lives)
    return summary


def _start_web_views(listen: str) -> dict[str, Any]:
    """The viewer sink's web view on ``listen``, the detection sink's on the next port."""
    from discover.sdk.telemetry import parse_listen
    from discover.sink.http.server import LiveServer

    host, port = parse_listen(listen, "--http")
    lives: dict[str, Any] = {}
    try:
        for k, name in enumerate(("viewer", "detection")):
            lives[name] = LiveServer(f"{host}:{port + k if port else 0}").start()
    except DiscoverError:
        for live in lives.values():
            live.stop()
        raise
    for name, live in lives.items():
        print(f"{name} sink web view: {live.url}view/{CAMERA}", file=sys.stderr)
    return lives


def _serve_until_interrupted(lives: dict[str, Any]) -> None:
    print("demo done; still serving the web views (the restream is now a full recording); "
          "Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for live in lives.values():
            live.stop()
