"""Mutation fuzzer over everything a sink parses from the network.

Targets (each takes bytes a hostile publisher controls):

* ``packet``: :func:`decode_packet` with the camera and substream of its topic (one input in
  ten on another substream's topic; half get a valid CRC-32 after mutation);
* ``reassembly``: one :class:`Reassembler` fed mutated packets of real frames, flushed every
  64 inputs, its pending bytes checked against its bound;
* ``meta``: :meth:`StreamMeta.from_json` and the sink's meta limits, on byte mutations and on
  JSON-aware ones (NaN / Infinity / negative fps, huge sizes and threads, deep nesting);
* ``side``: :meth:`SideInfo.decode` (with the sink's region cap) and the task container;
* ``cells``: the learned codec's rANS payloads *re-sealed with a valid CRC and tag*, so forged
  bodies reach the entropy decoder (the crash class of issue 14);
* ``codec``: a whole learned-codec ``decompress`` of a small frame with one mutated, re-sealed
  payload (temporal and per-frame streams);
* ``pipeline``: :class:`SinkPipeline` (classical codec) fed mutated packets and metas;
* ``signed``: a keyed reassembler fed signed packets with edits (CRC recomputed), some on
  another task's or camera's topic (a camera of the same session): none may be taken.

A target passes an input when it returns or raises the error it documents for bad input
(``PacketError``, ``PayloadError``, ...). Counted: inputs tried, ``crashes`` (any other exception,
or the worker process dying, e.g. a segfault), ``hangs`` (an input over ``--hang-s``) and the
worker's peak memory. Inputs are derived from ``--seed`` and their number, so a crash is
reproducible: ``--only TARGET --start N --inputs 1`` reruns input N.

    python -m discover.bench.fuzz_stream --inputs 1000000 --report fuzz.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import resource
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

CLIP = Path(__file__).resolve().parents[2] / "sdk" / "assets" / "sample" / "street.mp4"
CAM = "cam1"
PREFIX = "discover"
TASKS = ["detection", "vehicles"]
#: share of inputs per target (the slow ones get fewer)
MIX = {"packet": 30, "reassembly": 20, "meta": 12, "side": 14, "cells": 16, "codec": 1,
       "pipeline": 7, "signed": 8}
BATCH = 500
STARTUP_S = 900.0  # a worker's imports and corpus (slow on a loaded machine) before its inputs
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF, 0x8000, 0xFFFFFFFF, 0x7FFFFFFF, 64, 65]


# -- corpus -----------------------------------------------------------------------------------

def _clip_frames(n: int, size: tuple[int, int]) -> list[Any]:
    import av

    out = []
    with av.open(str(CLIP)) as c:
        for fr in c.decode(video=0):
            img = fr.to_ndarray(format="bgr24")
            out.append(img[96:96 + size[1], 400:400 + size[0]].copy())
            if len(out) == n:
                break
    return out


def build_corpus(frames: int = 4) -> dict[str, Any]:
    """Real streams to mutate: a 192x128 crop coded by the learned codec (per frame and
    temporal) and the classical codec, as meta + packets + payloads."""
    from discover.sdk.codecs import CODECS
    from discover.sdk.framing import frame_messages
    from discover.sdk.regions import Region
    from discover.sdk.stream import StreamMeta

    w, h = 192, 128
    regions = [Region(1, (16, 16, 64, 96), "person", 0.9, ("detection",)),
               Region(2, (80, 0, 128, 48), "car", 0.8, ("vehicles",)),
               Region(3, (128, 64, 192, 128), "person", 0.7, ("detection", "vehicles"))]
    imgs = _clip_frames(frames, (w, h))
    streams = {}
    for name, cfg in (("learned", {"type": "learned", "temporal": {"enabled": False}}),
                      ("temporal", {"type": "learned"}),
                      ("classical", {"type": "classical"})):
        codec = CODECS.create(cfg)
        meta = StreamMeta(camera=CAM, width=w, height=h, fps=10.0, tasks=TASKS,
                          labels=["object", "person", "car"], codec=codec.descriptor())
        coded, msgs = [], []
        for i, img in enumerate(imgs):
            c = codec.compress(img, regions, send_rest=(i % 2 == 0))
            coded.append(c)
            msgs.append(frame_messages(PREFIX, meta, 100 + i, 1_000_000 * (i + 1), regions, c,
                                       max_packet=1024, intra=c.stats.intra))
        streams[name] = {"meta": meta, "coded": coded, "messages": msgs, "regions": regions}
    return streams


# -- mutation ---------------------------------------------------------------------------------

def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """A few random edits: bit flips, interesting values, cuts, inserts, splices, repeats."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        if not b:
            b = bytearray(rng.randbytes(rng.randrange(1, 64)))
            continue
        i = rng.randrange(len(b))
        op = rng.randrange(9)
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice(INTERESTING) & 0xFF
        elif op == 2:
            v, size = rng.choice(INTERESTING), rng.choice((2, 4))
            b[i:i + size] = (v & (256 ** size - 1)).to_bytes(size, "big")
        elif op == 3:
            del b[i:i + rng.randrange(1, 16)]
        elif op == 4:
            b[i:i] = rng.randbytes(rng.randrange(1, 16))
        elif op == 5:
            del b[i:]
        elif op == 6:
            other = rng.choice(pool)
            j = rng.randrange(len(other)) if other else 0
            b[i:] = other[j:]
        elif op == 7:
            k = rng.randrange(1, 8)
            b[i:i] = bytes(b[i:i + k]) * rng.randrange(1, 64)
        else:
            b[i] = rng.randrange(256)
    return bytes(b)


def fix_crc(p: bytes) -> bytes:
    """A packet with its trailing CRC-32 recomputed (what a forger does)."""
    return p[:-4] + struct.pack(">I", zlib.crc32(p[:-4])) if len(p) > 4 else p


_BAD_VALUES: list[Any] = [math.nan, math.inf, -math.inf, -1, 0, 1e308, 100000, 65535, 65536,
                          2**63, "x" * 300, [], {}, None, True, [[[[[[[[[[1]]]]]]]]]]]


def mutate_meta(rng: random.Random, meta: dict[str, Any]) -> bytes:
    """JSON-aware meta mutations (or a depth bomb)."""
    m = json.loads(json.dumps(meta))
    roll = rng.randrange(10)
    if roll == 0:
        depth = rng.choice((50, 1000, 100_000))
        return b'{"format":"discover-stream","version":2,"camera":"cam1","x":' + \
            b"[" * depth + b"]" * depth + b"}"
    targets = [m, m["codec"], m["codec"].get("config") or {}]
    node = rng.choice(targets)
    key = rng.choice([*node.keys(), "threads", "device", "checkpoint", "onnx", "extra"]) \
        if node else "x"
    if rng.random() < 0.15:
        node.pop(key, None)
    else:
        node[key] = rng.choice(_BAD_VALUES)
    return json.dumps(m, allow_nan=True).encode()


# -- targets ----------------------------------------------------------------------------------

class Targets:
    """Per-process state of every target (codecs, metas, a reassembler, a pipeline)."""

    def __init__(self) -> None:
        from discover.sdk.codecs.learned.entropy import PayloadError
        from discover.sdk.codecs.learned.rans_check import RansError
        from discover.sdk.errors import DiscoverError, PacketError

        self.expected = (PacketError, PayloadError, RansError, DiscoverError)
        self.corpus = build_corpus()
        self.routed = [(t.split("/", 2)[2], p) for s in self.corpus.values()
                       for f in s["messages"] for t, p in f]  # (substream, packet)
        self.packets = [p for _, p in self.routed]
        self.metas = [s["meta"] for s in self.corpus.values()]
        self.meta_json = [m.to_json() for m in self.metas]
        self._reasm = None
        self._reasm_n = 0
        self._pipe = None
        self._pipe_n = 0
        self._codecs: dict[str, Any] = {}
        self._cells: list[tuple[Any, ...]] = []

    # packet
    def packet(self, rng: random.Random) -> None:
        from discover.sdk.packet import decode_packet

        substream, p = rng.choice(self.routed)
        if rng.random() < 0.1:  # a packet on another substream's topic
            substream = rng.choice(("side", "rest", "task/detection", "task/x", "task/", "meta"))
        p = mutate(rng, p, self.packets)
        decode_packet(fix_crc(p) if rng.random() < 0.5 else p, CAM, substream)

    # reassembly
    def reassembly(self, rng: random.Random) -> None:
        from discover.sdk.reassembly import Reassembler

        if self._reasm is None or self._reasm_n % 64 == 0:
            meta = self.metas[0]
            self._reasm = Reassembler(lambda c: meta if c == CAM else None, tasks=TASKS,
                                      max_frames=16, max_bytes=256 * 1024)
        self._reasm_n += 1
        r = self._reasm
        stream = rng.choice(list(self.corpus.values()))
        frame = rng.choice(stream["messages"])
        topic, p = rng.choice(frame)
        if rng.random() < 0.8:
            p = fix_crc(mutate(rng, p, self.packets))
        r.push(p, CAM, topic.split("/", 2)[2])
        r.pop_ready(flush=rng.random() < 0.1)
        assert r.stored_bytes <= r.max_bytes, "reassembler over its byte bound"

    # meta
    def meta(self, rng: random.Random) -> None:
        from discover.sdk.stream import StreamMeta

        base = rng.choice(self.metas)
        if rng.random() < 0.6:
            data = mutate_meta(rng, json.loads(base.to_json()))
        else:
            data = mutate(rng, base.to_json(), self.meta_json)
        StreamMeta.from_json(data)

    # side + task container
    def side(self, rng: random.Random) -> None:
        from discover.sdk.reassembly import Reassembler
        from discover.sdk.stream import SideInfo, unpack_items

        stream = rng.choice(list(self.corpus.values()))
        msgs = rng.choice(stream["messages"])
        r = Reassembler(lambda c: stream["meta"], tasks=TASKS)
        for topic, p in msgs:
            r.push(p, CAM, topic.split("/", 2)[2])
        (fr,) = r.pop_ready(flush=True)
        if rng.random() < 0.5:
            SideInfo.decode(mutate(rng, fr.side, [fr.side]), stream["meta"])
        else:
            blob = next(iter(fr.tasks.values()))
            unpack_items(mutate(rng, blob, [blob]))

    # learned codec
    def _codec(self, name: str) -> Any:
        if name not in self._codecs:
            from discover.sdk.codecs import CODECS

            self._codecs[name] = CODECS.create(self.corpus[name]["meta"].codec["config"])
        return self._codecs[name]

    def _cell_cases(self) -> list[tuple[Any, ...]]:
        """(intra coder, side, payload, cells, tag) of every region and rest of the per-frame
        stream (every payload intra)."""
        if not self._cells:
            from discover.sdk.codecs.learned import entropy as en
            from discover.sdk.codecs.learned.intra import IntraCoder

            intra = IntraCoder(self._codec("learned").model.coder())
            s = self.corpus["learned"]
            w, h = s["meta"].width, s["meta"].height
            grid = en.latent_grid(w, h)
            boxes = [en.latent_box(r.box, w, h) for r in s["regions"]]
            for c in s["coded"]:
                side = intra.decode_side(c["side"], en.hyper_grid(w, h))
                for r, box in zip(s["regions"], boxes, strict=True):
                    self._cells.append((intra, side, c["regions"][r.rid], box,
                                        side.region_tag(box)))
                if c["rest"]:
                    self._cells.append((intra, side, c["rest"], en.outside_mask(boxes, grid),
                                        side.rest_tag(grid, boxes)))
        return self._cells

    def cells(self, rng: random.Random) -> None:
        from discover.sdk.codecs.learned import entropy as en
        from discover.sdk.codecs.learned.intra import INTRA

        intra, side, payload, cells, tag = rng.choice(self._cell_cases())
        # after the seal (5 bytes) and the intra mode byte: the rANS cells
        body = mutate(rng, payload[6:], [c[2][6:] for c in self._cells])
        intra.decode_payload(en.seal(bytes([INTRA]) + body, tag), side, cells, tag)

    def codec(self, rng: random.Random) -> None:
        from discover.sdk.framing import codec_input
        from discover.sdk.reassembly import Reassembler

        name = rng.choice(("learned", "temporal"))
        s = self.corpus[name]
        codec = self._codec(name)
        i = rng.randrange(len(s["messages"]))
        r = Reassembler(lambda c: s["meta"], tasks=TASKS)
        for topic, p in s["messages"][i]:
            r.push(p, CAM, topic.split("/", 2)[2])
        (fr,) = r.pop_ready(flush=True)
        coded, side = codec_input(fr, s["meta"])
        which = rng.choice(["side", "rest", *coded["regions"]])
        if which == "rest" and not coded["rest"]:
            which = "side"
        old = coded["side"] if which == "side" else (
            coded["rest"] if which == "rest" else coded["regions"][which])
        _reseal(coded, which, side, mutate(rng, old[5:], [old[5:]]))
        codec.decompress(coded)

    # signed streams: no edit of a signed packet gets past a keyed reassembler
    def signed(self, rng: random.Random) -> None:
        from discover.sdk.reassembly import Reassembler

        if not hasattr(self, "_signed"):
            self._signed = _signed_stream(self.corpus["classical"])
        key, meta, packets = self._signed
        topic, orig = rng.choice(packets)
        forged = mutate(rng, orig, [p for _, p in packets])
        forged = fix_crc(forged) if rng.random() < 0.9 else forged
        substream = topic.split("/", 2)[2]
        if rng.random() < 0.2:  # republished on another task's topic (the MAC binds it)
            substream = rng.choice([f"task/{t}" for t in TASKS] + ["side", "rest"])
        r = Reassembler(lambda c: meta, tasks=TASKS, key=key)
        camera = CAM if rng.random() < 0.9 else "cam2"  # or another camera's, same session
        taken = r.push(forged, camera, substream)
        moved = camera != CAM or substream != topic.split("/", 2)[2]
        assert not taken or (forged == orig and not moved), "a forged packet passed the key check"

    # whole sink
    def pipeline(self, rng: random.Random) -> None:
        from discover.sdk.errors import PacketError  # noqa: F401 - the boundary catches it
        from discover.sink.config import SinkSection
        from discover.sink.pipeline import SinkPipeline

        if self._pipe is None or self._pipe_n % 200 == 0:
            self._pipe = SinkPipeline(SinkSection(tasks=TASKS, output="none",
                                                  max_pending_mb=1.0), PREFIX)
            self._pipe.feed(f"{PREFIX}/{CAM}/meta", self.corpus["classical"]["meta"].to_json())
        self._pipe_n += 1
        pipe = self._pipe
        if rng.random() < 0.05:
            pipe.feed(f"{PREFIX}/{CAM}/meta",
                      mutate_meta(rng, json.loads(self.corpus["classical"]["meta"].to_json())))
        frame = rng.choice(self.corpus["classical"]["messages"])
        for topic, p in frame:
            pipe.feed(topic, fix_crc(mutate(rng, p, self.packets)) if rng.random() < 0.3 else p)
        pipe.process_ready(flush=rng.random() < 0.2)


def _signed_stream(stream: dict[str, Any]) -> tuple[Any, Any, list[tuple[str, bytes]]]:
    """The classical stream's frames signed with a fuzzing key: (key, meta, packets)."""
    from discover.sdk.framing import frame_messages
    from discover.sdk.security import StreamKey

    key, meta = StreamKey(b"fuzzing-key-0123456789"), stream["meta"]
    packets = [m for i, c in enumerate(stream["coded"])
               for m in frame_messages(PREFIX, meta, 100 + i, 1_000_000 * (i + 1),
                                       stream["regions"], c, max_packet=1024,
                                       signer=key.signer(meta.session))]
    return key, meta, packets


def _reseal(coded: dict[str, Any], which: Any, side: Any, body: bytes) -> None:
    """Put ``body`` in place of payload ``which`` (``side``, ``rest`` or a region id), sealed
    with the CRC and tag the learned decoder checks, so the forged body reaches rANS."""
    from discover.sdk.codecs.learned import entropy as en

    if which == "side":
        coded["side"] = en.seal(body, b"side")
        return
    w, h = coded["size"]
    grid = en.latent_grid(w, h)
    boxes = {r.rid: en.latent_box(r.box, w, h) for r in side.regions}
    digest = en.side_digest(coded["side"])
    if which == "rest":
        coded["rest"] = en.seal(body, en.rest_tag(digest, grid,
                                                  [b for b in boxes.values() if b is not None]))
    elif boxes.get(which) is not None:
        coded["regions"] = {**coded["regions"],
                            which: en.seal(body, en.region_tag(digest, boxes[which]))}


# -- driver -----------------------------------------------------------------------------------

def _schedule(seed: int, n: int, only: str | None) -> tuple[str, random.Random]:
    rng = random.Random(f"{seed}/{n}")
    if only:
        return only, rng
    names, weights = zip(*MIX.items(), strict=True)
    return rng.choices(names, weights)[0], rng


def worker(seed: int, start: int, stop: int, only: str | None, hang_s: float, conn: Any) -> None:
    """Run inputs ``start..stop``; report progress per batch, findings as they happen."""
    import logging
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.disable(logging.CRITICAL)
    import torch

    torch.set_num_threads(1)
    t = Targets()
    conn.send(("ready", start, "", 0, ""))
    counts: Counter[str] = Counter()
    for n in range(start, stop):
        name, rng = _schedule(seed, n, only)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            getattr(t, name)(rng)
            counts[f"{name}_ok"] += 1
        except t.expected:
            counts[f"{name}_rejected"] += 1
        except Exception as e:  # the finding: anything a target does not document
            conn.send(("crash", n, name, f"{type(e).__name__}: {e}"[:300],
                       traceback.format_exc(limit=4)[-800:]))
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        counts["max_cpu_ms"] = max(counts["max_cpu_ms"], int(1000 * cpu))
        if cpu > hang_s:  # CPU time: on a shared machine wall time says more about the others
            conn.send(("hang", n, name, f"{cpu:.2f} s CPU ({wall:.2f} s wall)", ""))
        if (n + 1 - start) % BATCH == 0 or n + 1 == stop:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            conn.send(("progress", n + 1, dict(counts), rss, ""))
            counts.clear()


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    start, stop = args.start, args.start + args.inputs
    findings: list[dict[str, Any]] = []
    totals: Counter[str] = Counter()
    peak_kb, done, t0, max_cpu_ms = 0, start, time.monotonic(), 0
    last_print = 0.0
    while done < stop:
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=worker, args=(args.seed, done, stop, args.only, args.hang_s, child))
        p.start()
        child.close()
        last_seen, ready = time.monotonic(), False
        while True:
            if parent.poll(1.0):
                try:
                    kind, n, a, b, tb = parent.recv()
                except EOFError:
                    break
                last_seen = time.monotonic()
                if kind == "ready":
                    ready = True
                elif kind == "progress":
                    done = n
                    max_cpu_ms = max(max_cpu_ms, a.pop("max_cpu_ms", 0))
                    totals.update(a)
                    peak_kb = max(peak_kb, b)
                    if time.monotonic() - last_print > args.print_s:
                        last_print = time.monotonic()
                        _status(done - start, findings, peak_kb, t0)
                    if done >= stop:
                        break
                else:
                    findings.append({"kind": kind, "input": n, "target": a, "what": b, "trace": tb})
                    print(f"{kind} at input {n} ({a}): {b}", file=sys.stderr, flush=True)
            elif not p.is_alive() or time.monotonic() - last_seen > (
                    args.stall_s if ready else STARTUP_S):  # building the corpus takes a while
                break
        p.join(10.0 if done >= stop else 2.0)
        if done >= stop:
            if p.is_alive():
                p.kill()
            break
        if p.is_alive():  # no progress for stall_s: an input hangs
            p.kill()
            p.join()
            findings.append({"kind": "hang", "input": done, "target": "?",
                             "what": f"no progress for {args.stall_s:g} s (batch from {done})"})
            done = min(stop, (done // BATCH + 1) * BATCH)
        elif done < stop:  # died: a crash in the batch after the last report
            findings.append({"kind": "crash", "input": done, "target": "?",
                             "what": f"worker died (exit {p.exitcode}) in the batch from {done}"})
            done = min(stop, (done // BATCH + 1) * BATCH)
    rep = _report(args, done - start, totals, findings, peak_kb, time.monotonic() - t0)
    rep["max_input_cpu_s"] = round(max_cpu_ms / 1000, 3)
    return rep


def _status(n: int, findings: list[dict[str, Any]], peak_kb: int, t0: float) -> None:
    k = Counter(f["kind"] for f in findings)
    print(f"{n} inputs, {k['crash']} crashes, {k['hang']} hangs, peak {peak_kb // 1024} MiB, "
          f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def _report(args: argparse.Namespace, n: int, totals: Counter[str], findings: list[dict[str, Any]],
            peak_kb: int, seconds: float) -> dict[str, Any]:
    kinds = Counter(f["kind"] for f in findings)
    by_target = {name: {"ok": totals[f"{name}_ok"], "rejected": totals[f"{name}_rejected"]}
                 for name in MIX if totals[f"{name}_ok"] + totals[f"{name}_rejected"]}
    return {"inputs": n, "crashes": kinds["crash"], "hangs": kinds["hang"],
            "peak_rss_mib": round(peak_kb / 1024, 1), "seconds": round(seconds, 1),
            "inputs_per_s": round(n / seconds, 1) if seconds else 0.0, "seed": args.seed,
            "hang_s": args.hang_s, "targets": by_target, "findings": findings[:50]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m discover.bench.fuzz_stream",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--start", type=int, default=0, help="first input number (to rerun one)")
    ap.add_argument("--only", choices=sorted(MIX), help="fuzz one target")
    ap.add_argument("--hang-s", type=float, default=2.0,
                    help="an input taking more CPU time than this is a hang")
    ap.add_argument("--stall-s", type=float, default=60.0,
                    help="kill the worker after this long without progress")
    ap.add_argument("--print-s", type=float, default=30.0, help="progress line interval")
    ap.add_argument("--report", type=Path, help="write the JSON report here too")
    args = ap.parse_args(argv)
    rep = run(args)
    text = json.dumps(rep)
    if args.report:
        args.report.write_text(json.dumps(rep, indent=1))
    print(text)
    return 1 if rep["crashes"] or rep["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
