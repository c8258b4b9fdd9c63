"""A short run of the stream fuzzer (discover/bench/fuzz_stream.py) in the test suite: a few
hundred mutated inputs per target through the real parsers, rANS decoder, learned codec and
sink pipeline, plus hypothesis over raw bytes. Every input must be taken or refused with the
documented error; anything else fails with the input's number, which reruns it:
``python -m discover.bench.fuzz_stream --seed 14 --start N --inputs 1``."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("compressai")

from discover.sdk.errors import PacketError  # noqa: E402
from discover.sdk.packet import decode_packet  # noqa: E402
from discover.sdk.stream import SideInfo, StreamMeta, unpack_items  # noqa: E402

from discover.bench import fuzz_stream as fz  # noqa: E402


@pytest.fixture(scope="module")
def targets() -> fz.Targets:
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield fz.Targets()
    torch.set_num_threads(n)


@pytest.mark.parametrize("name, inputs", [("packet", 400), ("reassembly", 300), ("meta", 300),
                                          ("side", 300), ("cells", 200), ("codec", 12),
                                          ("pipeline", 60), ("signed", 400)])
def test_a_short_fuzz_run_finds_nothing(targets, name, inputs):
    outcome = {"ok": 0, "rejected": 0}
    for n in range(inputs):
        rng = random.Random(f"14/{name}/{n}")
        try:
            getattr(targets, name)(rng)
            outcome["ok"] += 1
        except targets.expected:
            outcome["rejected"] += 1
        except Exception as e:  # pragma: no cover - the finding
            pytest.fail(f"{name} input {n}: {type(e).__name__}: {e}")
    assert sum(outcome.values()) == inputs
    if name == "signed":  # no edit of a signed packet is taken (an unchanged one may be)
        assert outcome["rejected"] == 0 and outcome["ok"] == inputs
    if name in ("packet", "meta", "side", "cells"):  # mutations do get refused, and some pass
        assert outcome["rejected"] > 0 and outcome["ok"] > 0, outcome


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_raw_bytes_are_parsed_or_refused(data):
    meta = StreamMeta(camera="cam1", width=192, height=128, fps=10.0, tasks=["detection"],
                      labels=["object", "person"], codec={"type": "classical"})
    for parse in (lambda b: decode_packet(b, "cam1", "side"),
                  lambda b: decode_packet(b, "cam1", "task/detection"), StreamMeta.from_json,
                  lambda b: SideInfo.decode(b, meta),
                  unpack_items):
        with contextlib.suppress(PacketError):  # anything else fails the test
            parse(data)
