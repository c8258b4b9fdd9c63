"""``LiveServer``: the sink's web app on its own thread and event loop, so the sink's
processing loop stays plain synchronous code. One server per sink; it can outlive the sink's
run (``discover demo --serve`` keeps serving the last frames and the ended restream)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from discover.sdk.errors import DiscoverError
from discover.sdk.telemetry import parse_listen
from discover.sink.http.app import make_app
from discover.sink.http.config import HttpSection
from discover.sink.http.hub import LiveHub
from discover.sink.telemetry import SinkMetrics
from prometheus_client import CollectorRegistry


class LiveServer:
    """Serve ``hub`` and ``registry`` on ``listen`` (HOST:PORT, :PORT or PORT; port 0 picks a
    free one). ``start`` returns once the socket listens; ``url`` is where it is."""

    def __init__(self, listen: str | int, hub: LiveHub | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.host, self.port = parse_listen(listen, "sink.http.listen")
        self.hub = hub or LiveHub()
        self.registry = registry or CollectorRegistry()
        self.metrics = SinkMetrics(self.registry)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="sink-http",
                                        daemon=True)

    @classmethod
    def from_config(cls, http: HttpSection) -> LiveServer:
        """A server for ``sink.http`` (``listen`` must be set)."""
        assert http.listen is not None
        return cls(http.listen, LiveHub(history_s=http.history_s, jpeg_quality=http.jpeg_quality,
                                        restream=http.restream,
                                        restream_overlay=http.restream_overlay))

    def attach(self, pipe: Any, link_counters: Callable[[], Counter[str]] | None = None) -> None:
        """Show ``pipe``'s frames and export its counters (a later attach replaces them)."""
        pipe.listeners.append(self.hub.on_frame)
        self.metrics.attach(pipe, link_counters)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def _start(self) -> None:
        self._runner = web.AppRunner(make_app(self.hub, self.registry), access_log=None,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def start(self) -> LiveServer:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10.0)
        except OSError as e:
            self.stop()
            raise DiscoverError(f"sink.http: cannot listen on {self.host}:{self.port} "
                                f"({e.strerror or e}); pick a free port or another address "
                                "(--http HOST:PORT)") from None
        return self

    def stop(self) -> None:
        """Close the streams, stop serving, end the thread."""
        self.hub.close()
        if self._runner is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10.0)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        self._loop.close()
