"""The sink's web app (aiohttp): a page per sink listing its cameras, a live page per camera
(MJPEG view, task overlay, bit-rate chart), a JSON API, the HLS restream and ``/metrics``.

::

    GET /                              cameras of this sink (page)
    GET /view/<camera>                 live view + overlay + chart (page)
    GET /api/cameras                   [{"id", "width", "height", "fps", "kbps", ...}]
    GET /api/cameras/<camera>/latest   the last results JSON (as results/<frame>.json)
    GET /api/cameras/<camera>/overlay  shapes to draw: boxes, labels, scores, mask outlines
    GET /api/cameras/<camera>/stats    per second: kbit/s by substream, frames/s
    GET /api/cameras/<camera>/snapshot.jpg, /api/cameras/<camera>/mjpeg
    GET /hls/<camera>/index.m3u8, /hls/<camera>/segNNNNN.ts   restream
    GET /healthz, GET /metrics

The page is plain HTML, CSS and a small hand-written script from ``static/``: no CDN, works
offline.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from discover.sink.http.hub import LiveHub
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

STATIC = Path(__file__).parent / "static"
BOUNDARY = "discoverframe"
_SEGMENT = re.compile(r"^seg\d{5}\.ts$")
HUB = web.AppKey("hub", LiveHub)
REGISTRY = web.AppKey("registry", CollectorRegistry)


def _not_found(camera: str) -> web.Response:
    return web.json_response({"error": f"unknown camera {camera!r}; GET /api/cameras lists "
                                       "the cameras this sink has seen"}, status=404)


def _hub(request: web.Request) -> LiveHub:
    return request.app[HUB]


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def camera_page(request: web.Request) -> web.StreamResponse:
    if not _hub(request).has(request.match_info["camera"]):
        raise web.HTTPNotFound(text="unknown camera; see / for this sink's cameras")
    return web.FileResponse(STATIC / "camera.html")


async def cameras(request: web.Request) -> web.Response:
    return web.json_response(_hub(request).cameras())


def _camera_json(getter: str):  # noqa: ANN202
    async def handler(request: web.Request) -> web.Response:
        camera = request.match_info["camera"]
        body: dict[str, Any] | None = getattr(_hub(request), getter)(camera)
        if body is None:
            return _not_found(camera)
        return web.json_response(body, headers={"Cache-Control": "no-store"})
    return handler


async def snapshot(request: web.Request) -> web.Response:
    camera = request.match_info["camera"]
    got = await asyncio.get_running_loop().run_in_executor(None, _hub(request).jpeg, camera)
    if got is None:
        return _not_found(camera)
    return web.Response(body=got[0], content_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Frame-Index": str(got[2].frame)})


async def mjpeg(request: web.Request) -> web.StreamResponse:
    """multipart/x-mixed-replace: each new composed frame as one JPEG part (headers name its
    frame index, capture time and when the sink finished it, so a client can measure how far
    behind it is). The boundary is sent right after each picture, so a browser shows it at
    once instead of waiting for the next part."""
    hub, camera = _hub(request), request.match_info["camera"]
    if not hub.has(camera):
        return _not_found(camera)
    resp = web.StreamResponse(headers={
        "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
        "Cache-Control": "no-store"})
    await resp.prepare(request)
    await resp.write(f"--{BOUNDARY}\r\n".encode())
    loop, sent, last = asyncio.get_running_loop(), -1, 0.0
    while not hub.closed:
        # a new frame at once; the same one again each second while the stream is still, so a
        # browser that shows a part only once the next begins shows the last frame too
        if hub.version(camera) == sent and time.monotonic() - last < 1.0:
            await asyncio.sleep(0.02)
            continue
        last = time.monotonic()
        got = await loop.run_in_executor(None, hub.jpeg, camera)
        if got is None:
            break
        data, sent, report = got
        head = (f"Content-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
                f"X-Frame-Index: {report.frame}\r\nX-Capture-Us: {report.capture_us}\r\n"
                f"X-Decoded-At: {report.decoded_at:.6f}\r\n\r\n")
        try:
            await resp.write(head.encode() + data + f"\r\n--{BOUNDARY}\r\n".encode())
        except ConnectionResetError:  # the viewer went away (tab closed)
            break
    return resp


async def hls(request: web.Request) -> web.StreamResponse:
    camera, name = request.match_info["camera"], request.match_info["name"]
    folder = _hub(request).restream_folder(camera)
    if folder is None:
        return _not_found(camera)
    if name != "index.m3u8" and not _SEGMENT.match(name):
        raise web.HTTPNotFound(text="no such restream file")
    path = folder / name
    if not path.is_file():
        raise web.HTTPNotFound(text="not written yet (the restream starts with the first "
                                    "decoded frame) or already rotated out")
    ctype = "application/vnd.apple.mpegurl" if name.endswith(".m3u8") else "video/mp2t"
    return web.Response(body=path.read_bytes(), content_type=ctype,
                        headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    hub = _hub(request)
    cams = hub.cameras()
    return web.json_response({"status": "ok", "uptime_s": round(time.time() - hub.started, 1),
                              "cameras": len(cams), "frames": sum(c["frames"] for c in cams)})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(hub: LiveHub, registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    app[HUB], app[REGISTRY] = hub, registry
    app.router.add_get("/", page)
    app.router.add_get("/view/{camera}", camera_page)
    app.router.add_get("/api/cameras", cameras)
    for name in ("latest", "overlay", "stats"):
        getter = "series" if name == "stats" else name
        app.router.add_get(f"/api/cameras/{{camera}}/{name}", _camera_json(getter))
    app.router.add_get("/api/cameras/{camera}/snapshot.jpg", snapshot)
    app.router.add_get("/api/cameras/{camera}/mjpeg", mjpeg)
    app.router.add_get("/hls/{camera}/{name}", hls)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", STATIC)
    return app
