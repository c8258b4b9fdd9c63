"""``discover bench stream``: the streaming spine's own costs on the sample clip, through a local
Mosquitto, with edge and sink as separate processes (as deployed).

Two runs on the same frames:

* **paced** (the clip's real-time rate): end-to-end latency capture -> decoded frame, and the
  part added by packetization, the publish queue and the broker (publish -> reassembled);
* **as fast as possible**: edge and sink frames per second, per-stage edge timings
  (grounding, encoding, packetizing), whether the edge keeps up with real time.

Also: packet overhead (header bytes over payload bytes) and peak memory of edge and sink.
Writes ``<out>/stream.json`` and prints a one-line JSON summary with ``--json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from discover.broker import LocalBroker
from discover.edge.sources import open_source
from discover.progress import Progress
from discover.sdk.assets import SAMPLE_CLIP
from discover.sdk.errors import DiscoverError

CAMERA = "bench"


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_pair(source: str, broker: str, frames: int | None, out: Path, realtime: bool,
              prog: Progress, label: str, grounder: str | None = None,
              codec: str | None = None, sets: Sequence[str] = ()) -> dict[str, Any]:
    """Start a sink process, run an edge process to the end, collect both summaries + timings;
    ``sets`` (``--set k=v``) go to both."""
    out.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "discover"]
    common = ["--broker", broker, "--json", "-q", "--prefix", "bench",
              *(arg for kv in sets for arg in ("--set", kv))]
    sink_cmd = py + ["sink", "--camera", CAMERA, "--task", "detection", "--output", "none",
                     "--idle-timeout", "5", "--timings", str(out / "sink.jsonl"), *common]
    if frames:
        sink_cmd += ["--max-frames", str(frames)]
    edge_cmd = py + ["edge", "--source", source, "--camera", CAMERA, "--task", "detection",
                     "--timings", str(out / "edge.jsonl"), *common]
    if frames:
        edge_cmd += ["--max-frames", str(frames)]
    if realtime:
        edge_cmd.append("--realtime")
    if grounder:
        edge_cmd += ["--grounder", grounder]
    if codec:
        edge_cmd += ["--set", f"edge.codec.type={codec}"]
    sink = subprocess.Popen(sink_cmd + ["-v"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ready = threading.Event()
    errors: list[str] = []

    def watch() -> None:  # frames published before the sink subscribed would be missed
        for line in sink.stderr:
            if "sink ready" in line:
                ready.set()
            elif line.startswith("error"):
                errors.append(line.strip())
        ready.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        if not ready.wait(60) or sink.poll() is not None:
            raise DiscoverError(f"bench sink did not start: {errors[-1:] or 'timeout'}")
        prog.update(f"{label}: edge running", force=True)
        edge = subprocess.run(edge_cmd, capture_output=True, text=True, timeout=600)
        if edge.returncode != 0:
            raise DiscoverError(f"bench edge failed: {edge.stderr.strip().splitlines()[-1:]}")
        prog.update(f"{label}: waiting for the sink", force=True)
        s_out = sink.stdout.read()
        sink.wait(120)
    finally:
        if sink.poll() is None:
            sink.kill()
    if sink.returncode != 0:
        raise DiscoverError(f"bench sink failed: {errors[-1:]}")
    return {"edge": json.loads(edge.stdout.strip().splitlines()[-1]),
            "sink": json.loads(s_out.strip().splitlines()[-1]),
            "edge_t": _read_jsonl(out / "edge.jsonl"), "sink_t": _read_jsonl(out / "sink.jsonl")}


def _latency(run: dict[str, Any]) -> dict[str, Any]:
    edge = {r["frame"]: r for r in run["edge_t"]}
    e2e, transport, queue, added = [], [], [], []
    for r in run["sink_t"]:
        e = edge.get(r["frame"])
        if e is None or "t_published" not in e:
            continue
        e2e.append((r["t_decoded"] * 1e6 - r["capture_us"]) / 1000)
        t = 1000 * (r["t_assembled"] - e["t_published"])
        q = 1000 * (e["t_published"] - e["t_submitted"])
        transport.append(t)
        queue.append(q)
        added.append(t + q + e["packetize_ms"])
    return {"e2e_ms_p50": _pct(e2e, 50), "e2e_ms_p95": _pct(e2e, 95),
            "broker_ms_p50": _pct(transport, 50), "broker_ms_p95": _pct(transport, 95),
            "queue_ms_p50": _pct(queue, 50),
            "added_by_packets_and_broker_ms_p50": _pct(added, 50),
            "added_by_packets_and_broker_ms_p95": _pct(added, 95), "matched_frames": len(e2e)}


def run_bench_stream(source: str | None = None, max_frames: int | None = None,
                     out: Path = Path("out/bench"), broker_url: str | None = None,
                     quiet: bool = False, grounder: str | None = None,
                     codec: str | None = None, sets: Sequence[str] = ()) -> dict[str, Any]:
    src = source or str(SAMPLE_CLIP)
    prog = Progress("bench stream", enabled=not quiet)
    local = None if broker_url else LocalBroker("mosquitto").start()
    url = broker_url or local.url
    try:
        paced = _run_pair(src, url, max_frames, out / "paced", True, prog, "paced run", grounder,
                          codec, sets)
        fast = _run_pair(src, url, max_frames, out / "asap", False, prog,
                         "as-fast-as-possible run", grounder, codec, sets)
    finally:
        prog.done()
        if local is not None:
            local.stop()
    fe, fs, pe = fast["edge"], fast["sink"], paced["edge"]
    probe = open_source(src)
    nominal = probe.fps
    probe.close()
    summary = {
        "source": src, "frames": fe["frames"], "grounder": grounder or "default",
        "codec": codec or "default", "sets": list(sets),
        "frames_received_paced": paced["sink"]["frames"], "frames_received_asap": fs["frames"],
        "dropped_paced": pe["dropped"] + paced["sink"]["dropped"],
        "dropped_asap": fe["dropped"] + fs["dropped"],
        "edge_fps_asap": fe["fps"], "sink_fps_asap": fs["fps"],
        "edge_fps_paced": pe["fps"], "clip_fps": round(nominal, 2),
        "edge_realtime_factor": round(fe["fps"] / nominal, 2),
        "ground_ms": fe["ground_ms"], "encode_ms": fe["encode_ms"],
        "packetize_ms": fe["packetize_ms"],
        "ground_fps": round(1000 / fe["ground_ms"], 1) if fe["ground_ms"] else None,
        "encode_fps": round(1000 / fe["encode_ms"], 1) if fe["encode_ms"] else None,
        "packet_overhead": fe["packet_overhead"], "packets": fe["packets"],
        "kbps_published": pe["kbps"], "bpp_published": pe["bpp"],
        "kbps_sink": paced["sink"]["kbps"], "bpp_sink": paced["sink"]["bpp"],
        "task_area_share": pe["task_area_share"],
        **{f"paced_{k}": v for k, v in _latency(paced).items()},
        "edge_peak_rss_mb": max(fe["peak_rss_mb"], pe["peak_rss_mb"]),
        "sink_peak_rss_mb": max(fs["peak_rss_mb"], paced["sink"]["peak_rss_mb"]),
        "broker": "mosquitto" if local is not None else url,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream.json").write_text(json.dumps(summary, indent=2))
    return summary
