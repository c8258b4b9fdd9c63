"""Prometheus plumbing shared by the edge and the sink (``prometheus_client``).

Both sides already count everything in their JSON summaries, so their metrics are *custom
collectors* that read those counters when scraped (prometheus_client's pattern for exporting
existing state): a scrape and the summary at the end of a run read the same numbers. Latency
histograms are the exception; they are observed per frame. Each process part (an edge, a sink)
gets its own ``CollectorRegistry``, so two sinks in one process (the demo) never clash.

Metric names follow Prometheus' conventions: ``discover_<side>_<what>_<unit>``, counters end in
``_total``, durations are in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from discover.sdk.errors import DiscoverError
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

MetricFamily = TypeVar("MetricFamily", CounterMetricFamily, GaugeMetricFamily)

#: capture -> published / decoded, in seconds: from a fast loopback frame to a stalled broker
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def parse_listen(spec: str | int, what: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` -> (host, port); loopback unless a host is given."""
    text = str(spec).strip()
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else ""
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise DiscoverError(f"{what} {text!r} is not HOST:PORT or PORT; pass e.g. "
                            f"127.0.0.1:8080 (0 picks a free port)")
    return host or default_host, number


def check_listen(value: str | None, what: str) -> str | None:
    """A config validator's half: ``value`` if it parses, else ValueError with the fix."""
    if value is not None:
        try:
            parse_listen(value, what)
        except DiscoverError as e:
            raise ValueError(str(e)) from None
    return value


def _fill(fam: MetricFamily, values: Mapping[tuple[str, ...], float]) -> MetricFamily:
    for key, v in sorted(values.items()):
        fam.add_metric(list(key), float(v))
    return fam


def counter(name: str, doc: str, labels: Sequence[str],
            values: Mapping[tuple[str, ...], float]) -> CounterMetricFamily:
    """A counter family from ``{label values: count}`` (``name`` without ``_total``)."""
    return _fill(CounterMetricFamily(name, doc, labels=list(labels)), values)


def gauge(name: str, doc: str, labels: Sequence[str],
          values: Mapping[tuple[str, ...], float]) -> GaugeMetricFamily:
    return _fill(GaugeMetricFamily(name, doc, labels=list(labels)), values)


def latency_histogram(name: str, doc: str, registry: CollectorRegistry,
                      labels: Iterable[str] = ("camera",)) -> Histogram:
    return Histogram(name, doc, list(labels), registry=registry, buckets=LATENCY_BUCKETS)


class MetricsServer:
    """``/metrics`` of one registry on prometheus_client's own HTTP server (a daemon thread)."""

    def __init__(self, listen: str | int, registry: CollectorRegistry, what: str) -> None:
        host, port = parse_listen(listen, what)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            raise DiscoverError(f"{what}: cannot listen on {host}:{port} ({e.strerror or e}); "
                                "pick a free port or another address") from None
        self.host, self.port = host, int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
