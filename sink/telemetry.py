"""The sink's Prometheus metrics: a collector over the pipeline's own counters (the numbers of
its JSON summary) plus a capture -> decoded latency histogram fed by frame reports.

=============================================  ===============================================
metric                                         from
=============================================  ===============================================
discover_sink_frames_total{camera,task}        frames decoded and run through each task
discover_sink_received_bytes_total{camera,     wire bytes of the packets kept, by substream
  substream}                                   (side, task/<task>, rest)
discover_sink_packets_total                    packets received
discover_sink_dropped_packets_total{reason}    malformed/forged/late packets (summary drop_reasons)
discover_sink_dropped_frames_total{reason}     no side in time, evicted, refused, undecodable,
                                               failed
discover_sink_partial_frames_total             decoded from what came after the frame timeout
discover_sink_missing_frames_total             frame numbers never seen
discover_sink_decode_errors_total{kind}        region decode errors, missing references
discover_sink_refresh_requests_total           keyframe requests sent to edges
discover_sink_reconnects_total                 broker reconnects
discover_sink_pending_frames                   frames waiting for substreams (gauge)
discover_sink_latency_seconds{camera}          capture -> decoded and analysed (histogram)
=============================================  ===============================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from discover.sdk.telemetry import counter, gauge, latency_histogram
from discover.sink.report import FrameReport
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector


def _copy(c: Counter[Any]) -> dict[Any, int]:
    return dict.copy(c)  # atomic under the GIL while another thread counts


class SinkCollector(Collector):
    """Reads a ``SinkPipeline`` (and its MQTT link's counters, when there is one) at scrape
    time."""

    def __init__(self, pipe: Any, link_counters: Callable[[], Counter[str]] | None = None) -> None:
        self.pipe, self.link_counters = pipe, link_counters

    def collect(self) -> Iterator[Metric]:
        p = self.pipe
        rc, pc = _copy(p.reasm.counters), _copy(p.counters)
        cams = list(p.cameras.values())
        yield counter("discover_sink_frames", "Frames the sink decoded, per task",
                      ["camera", "task"],
                      {(c.meta.camera, t): c.frames for c in cams for t in p.section.tasks})
        yield counter("discover_sink_received_bytes", "Wire bytes of the packets kept, by "
                      "substream", ["camera", "substream"], _copy(p.substream_bytes))
        yield counter("discover_sink_packets", "Packets received", [], {(): rc.get("packets", 0)})
        yield counter("discover_sink_dropped_packets", "Packets dropped, by reason", ["reason"],
                      {(k[5:],): v for k, v in rc.items() if k.startswith("drop_")})
        yield counter("discover_sink_dropped_frames", "Frames dropped, by reason", ["reason"], {
            ("no_side",): rc.get("frames_dropped", 0), ("evicted",): rc.get("frames_evicted", 0),
            ("refused",): pc.get("frames_refused", 0),
            ("undecodable",): pc.get("frames_undecodable", 0),
            ("failed",): pc.get("frames_failed", 0)})
        yield counter("discover_sink_partial_frames", "Frames decoded from what came after "
                      "the frame timeout", [], {(): rc.get("frames_partial", 0)})
        yield counter("discover_sink_missing_frames", "Frame numbers never seen", [],
                      {(): pc.get("frames_missing", 0)})
        yield counter("discover_sink_decode_errors", "Decode errors, by kind", ["kind"], {
            ("region",): pc.get("region_errors", 0),
            ("missing_reference",): pc.get("frames_missing_reference", 0)})
        yield counter("discover_sink_refresh_requests", "Keyframe requests sent to edges", [],
                      {(): pc.get("refresh_requests", 0)})
        link = self.link_counters() if self.link_counters is not None else Counter()
        yield counter("discover_sink_reconnects", "Broker reconnects", [],
                      {(): max(0, link.get("connects", 0) - 1)})
        yield gauge("discover_sink_pending_frames", "Frames waiting for their substreams", [],
                    {(): p.reasm.pending_frames})


class SinkMetrics:
    """The registry entries of one sink: ``attach`` a pipeline, then the latency histogram
    follows its frame reports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.latency = latency_histogram("discover_sink_latency_seconds",
                                         "Capture -> decoded and analysed", registry)
        self._collector: SinkCollector | None = None

    def attach(self, pipe: Any, link_counters: Callable[[], Counter[str]] | None = None) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = SinkCollector(pipe, link_counters)
        self.registry.register(self._collector)
        pipe.listeners.append(self.on_frame)

    def on_frame(self, r: FrameReport) -> None:
        self.latency.labels(r.camera).observe(max(0.0, r.latency_s))
