"""configs/grafana-dashboard.json only queries metrics the edge and the sink export."""

from __future__ import annotations

import json
import re
from collections import Counter
from types import SimpleNamespace

from discover.edge.telemetry import EdgeMetrics
from discover.sdk.resources import config_path
from discover.sink.telemetry import SinkMetrics
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def exported() -> set[str]:
    stats = SimpleNamespace(frames=3, publisher=Counter(frames_published=3), bytes=Counter(side=9),
                            link=Counter(connects=1), control=Counter())
    agent = SimpleNamespace(stats=stats, cam=SimpleNamespace(id="cam0"), publisher=None)
    edge = EdgeMetrics([agent])
    edge.submitted("cam0", 0, 500_000)
    edge.published("cam0", 0, 1.0)
    reg = CollectorRegistry()
    sink = SinkMetrics(reg)
    cam = SimpleNamespace(meta=SimpleNamespace(camera="cam0"), frames=3)
    pipe = SimpleNamespace(reasm=SimpleNamespace(counters=Counter(packets=2, drop_truncated=1),
                                                 pending_frames=0),
                           counters=Counter(), cameras={"cam0": cam},
                           section=SimpleNamespace(tasks=["detection"]),
                           substream_bytes=Counter({("cam0", "side"): 9}), listeners=[])
    sink.attach(pipe)
    sink.latency.labels("cam0").observe(0.1)
    names = set()
    for r in (edge.registry, reg):
        for fam in text_string_to_metric_families(generate_latest(r).decode()):
            names.add(fam.name)
            names.update(s.name for s in fam.samples)
    return names


def test_dashboard_queries_exported_metrics():
    dash = json.loads(config_path("grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"discover_[a-z_]+", e)}
    assert len(used) >= 10
    assert used <= exported(), used - exported()
