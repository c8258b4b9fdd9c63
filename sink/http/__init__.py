"""The sink's web view: live composed video with task overlays, JSON API, HLS restream and
Prometheus ``/metrics`` (``sink.http``; ``discover sink --http HOST:PORT``)."""
