"""The edge's Prometheus metrics (``edge.metrics: HOST:PORT`` / ``discover edge --metrics``): a
collector over each camera's ``EdgeStats`` and publisher, plus a capture -> published latency
histogram.

=================================================  ===========================================
metric                                             from
=================================================  ===========================================
discover_edge_frames_total{camera}                 frames grounded and coded
discover_edge_published_frames_total{camera}       frames whose packets all went to the broker
discover_edge_bytes_total{camera,substream}        bytes coded, by substream (side, task, rest)
discover_edge_dropped_frames_total{camera,reason}  queue_full (newest wins), partial publish
discover_edge_reconnects_total{camera}             broker reconnects
discover_edge_refresh_requests_total{camera}       keyframe requests from sinks
discover_edge_publish_queue_frames{camera}         frames waiting to be published (gauge)
discover_edge_latency_seconds{camera}              capture -> published (histogram)
=================================================  ===========================================
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from discover.sdk.telemetry import MetricsServer, counter, gauge, latency_histogram
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector


class EdgeCollector(Collector):
    """Reads the camera agents' live counters at scrape time."""

    def __init__(self, agents: list[Any]) -> None:
        self.agents = agents

    def collect(self) -> Iterator[Metric]:
        frames, published, nbytes, dropped, reconnects, refresh, queue = ({} for _ in range(7))
        for a in self.agents:
            s, cam = a.stats, a.cam.id
            pub = dict.copy(s.publisher)
            frames[(cam,)] = s.frames
            published[(cam,)] = pub.get("frames_published", 0)
            for sub, n in dict.copy(s.bytes).items():
                nbytes[(cam, sub)] = n
            dropped[(cam, "queue_full")] = pub.get("frames_dropped", 0)
            dropped[(cam, "partial")] = pub.get("frames_partial", 0)
            reconnects[(cam,)] = max(0, s.link.get("connects", 0) - 1)
            refresh[(cam,)] = s.control.get("refresh_requests", 0)
            p = getattr(a, "publisher", None)
            queue[(cam,)] = len(p.queue) if p is not None else 0
        yield counter("discover_edge_frames", "Frames grounded and coded", ["camera"], frames)
        yield counter("discover_edge_published_frames", "Frames whose packets all went to the "
                      "broker", ["camera"], published)
        yield counter("discover_edge_bytes", "Bytes coded, by substream",
                      ["camera", "substream"], nbytes)
        yield counter("discover_edge_dropped_frames", "Frames dropped before the broker, by "
                      "reason", ["camera", "reason"], dropped)
        yield counter("discover_edge_reconnects", "Broker reconnects", ["camera"], reconnects)
        yield counter("discover_edge_refresh_requests", "Keyframe requests from sinks",
                      ["camera"], refresh)
        yield gauge("discover_edge_publish_queue_frames", "Frames waiting to be published",
                    ["camera"], queue)


class EdgeMetrics:
    """One edge process's metrics; each camera agent calls ``submitted`` and ``published``."""

    def __init__(self, agents: list[Any], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.registry.register(EdgeCollector(agents))
        self.latency = latency_histogram("discover_edge_latency_seconds",
                                         "Capture -> published to the broker", self.registry)
        self._capture_us: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        for a in agents:
            a.metrics = self

    def submitted(self, camera: str, index: int, capture_us: int) -> None:
        with self._lock:
            self._capture_us[(camera, index)] = capture_us
            if len(self._capture_us) > 4096:  # frames dropped before publishing never report
                for key in list(self._capture_us)[:1024]:
                    del self._capture_us[key]

    def published(self, camera: str, index: int, t: float) -> None:
        with self._lock:
            cap = self._capture_us.pop((camera, index), None)
        if cap is not None:
            self.latency.labels(camera).observe(max(0.0, t - cap / 1e6))

    def serve(self, listen: str) -> MetricsServer:
        return MetricsServer(listen, self.registry, "edge.metrics")
