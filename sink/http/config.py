"""``sink.http``: the web view's settings (off unless ``listen`` is set)."""

from __future__ import annotations

from discover.sdk.telemetry import check_listen
from pydantic import BaseModel, ConfigDict, Field, field_validator


class HttpSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    listen: str | None = Field(None, description="HOST:PORT (or PORT: loopback) to serve the "
                               "live view, /api, /metrics and the restream on; off when unset")
    restream: bool = Field(True, description="HLS restream of each camera's composed view "
                                             "at /hls/<camera>/index.m3u8")
    restream_overlay: bool = Field(True, description="draw the task results into the restream")
    jpeg_quality: int = Field(80, ge=10, le=100, description="live view (MJPEG) quality")
    history_s: int = Field(300, ge=10, le=86400, description="seconds of rate history kept "
                                                             "for the page's chart")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        return check_listen(v, "sink.http.listen")
