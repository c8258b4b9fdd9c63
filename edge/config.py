"""The edge section of a deployment file: cameras, grounder, codec, queueing."""

from __future__ import annotations

import math
from typing import Any

from discover.sdk.codecs import CODECS
from discover.sdk.grounders import GROUNDERS
from discover.sdk.packet import DEFAULT_MAX_PACKET
from discover.sdk.telemetry import check_listen
from discover.sdk.topics import check_name
from discover.sdk.tracking import TrackingConfig
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GrounderChoice = GROUNDERS.config_union()
DEFAULT_GROUNDER = "nanodet"
#: per-task HEVC streams (sdk/codecs/video): on a 2-core CPU gateway it needs a fraction of the
#: learned codec's rate for the same detection score and runs in real time (docs/video-codec.md);
#: "learned" (the seed's region codec) stays selectable for GPU gateways and the diffusion
#: composer's latent head, "classical" (WebP crops) is the no-video baseline
DEFAULT_CODEC = "video"
#: ground every 3rd frame and track the boxes in between (flow): the default edge then keeps up
#: with a 10 fps camera on 2 cores; the video codec codes the whole frame, so the boxes only
#: feed the side table and the rest trigger
DEFAULT_TRACKING_EVERY = 3
CodecChoice = CODECS.config_union()


class CameraConfig(BaseModel):
    """One camera: where frames come from and which tasks it serves."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="camera id, used in topics")
    source: str = Field(description="video file, RTSP/HTTP URL, webcam index or image folder")
    tasks: list[str] = Field(default_factory=lambda: ["detection"], min_length=1)
    realtime: bool = Field(False, description="pace files at their frame rate (live sources "
                                              "are always real time)")
    fps: float | None = Field(None, gt=0, description="override the source's frame rate")
    max_frames: int | None = Field(None, ge=1)
    rest_interval: int = Field(10, ge=0, description="send rest every N frames (0: never, "
                               "task substreams only)")
    rest_on_change: float = Field(0.05, ge=0, le=1, description="with rest_interval > 0, also "
                                  "send rest when more than this share of the view outside "
                                  "the task regions changed since the last rest (grey level at "
                                  "1/8 size moved by over 8 %; sdk/rest.py); a static street "
                                  "stays under 0.02 for 10 s. 0: off")
    rest_min_gap: int = Field(5, ge=1, description="frames after a rest before a change may "
                              "send the next (bounds the cost on a moving camera)")
    grounder: GrounderChoice | None = Field(None, description="per-camera grounder override")
    codec: CodecChoice | None = Field(None, description="per-camera codec override")
    tracking: TrackingConfig | None = Field(None, description="per-camera override of "
                                            "edge.tracking (a whole section)")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_name(v, "camera id")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        return [check_name(t, "task name") for t in dict.fromkeys(v)]


class EdgeSection(BaseModel):
    """Everything the edge agent needs besides the broker."""

    model_config = ConfigDict(extra="forbid")
    cameras: list[CameraConfig] = Field(default_factory=list)
    grounder: GrounderChoice = Field(
        default_factory=lambda: GROUNDERS.parse_config(DEFAULT_GROUNDER),
        description="the offline default is nanodet (COCO-80, shipped); motion needs no model; "
                    "grounding-dino is open-vocabulary but needs its weights")
    codec: CodecChoice = Field(default_factory=lambda: CODECS.parse_config(DEFAULT_CODEC),
                               description="video (default, sdk/codecs/video), learned "
                                           "(sdk/codecs/learned) or classical")
    tracking: TrackingConfig = Field(
        default_factory=lambda: TrackingConfig(every=DEFAULT_TRACKING_EVERY),
        description="ground every N-th frame and track boxes in between (default: every 3rd; "
                    "every: 1 grounds every frame, the paper's setting)")
    code_queue: int = Field(3, ge=1, le=64, description="frames that may wait for or be in the "
                            "encoder while the next ones are grounded (1: strict alternation); "
                            "a few let the coder work through a grounding burst (a detector "
                            "pass every few frames) instead of idling behind it")
    max_packet: int = Field(DEFAULT_MAX_PACKET, ge=1024, le=256 * 1024 * 1024,
                            description="largest MQTT message; payloads fragment under it")
    queue_seconds: float = Field(30.0, gt=0, description="seconds of video kept while the "
                                 "broker is unreachable (a restart, a reconnect backoff) before "
                                 "the oldest frame is dropped")
    queue_frames: int | None = Field(None, ge=1, description="the same in frames (overrides "
                                     "queue_seconds)")

    def queue_for(self, fps: float) -> int:
        """Frames the publisher queue holds for a camera at ``fps``."""
        return self.queue_frames or max(1, math.ceil(self.queue_seconds * fps))
    max_unacked: int = Field(256, ge=1, description="QoS 1 messages in flight before waiting")
    refresh_min_interval_s: float = Field(
        1.0, ge=0, description="honour at most one sink refresh request (intra frame) per "
                               "camera this often; the rest are counted and ignored")
    max_regions: int = Field(256, ge=1, le=65535)
    dedupe_iou: float = Field(0.6, ge=0, le=1, description="boxes overlapping a better one by "
                              "more than this IoU are one object (coded once, serving both "
                              "boxes' tasks); 0 keeps every box")
    merge_regions: bool = Field(True, description="merge overlapping regions into their bounding "
                                "box where that codes fewer cells (same tasks, or one inside "
                                "the other); each region's cells are coded on their own, so an "
                                "overlap otherwise costs twice")
    connect_timeout_s: float = Field(30.0, gt=0, description="give up if the broker was never "
                                                             "reached in this time")
    metrics: str | None = Field(None, description="HOST:PORT (or PORT: loopback) to serve "
                                "Prometheus /metrics on while the edge runs (edge/telemetry.py)")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: str | None) -> str | None:
        return check_listen(v, "edge.metrics")

    @model_validator(mode="before")
    @classmethod
    def _camera_overrides_inherit_type(cls, data: Any) -> Any:
        """A ``codec``/``grounder`` without ``type`` tunes the default backend; a per-camera one
        of the section's type (or none) starts from the section's settings, so
        ``--set edge.cameras.0.codec.quality=90`` changes only the quality of that camera."""
        if not isinstance(data, dict):
            return data
        defaults = {"codec": DEFAULT_CODEC, "grounder": DEFAULT_GROUNDER}
        for key, fallback in defaults.items():
            section = data.get(key)
            if isinstance(section, BaseModel):
                section = section.model_dump()
            if not isinstance(section, dict):
                section = {}
            section = data[key] = {"type": fallback, **section}
            cameras = data.get("cameras")
            for cam in cameras if isinstance(cameras, list) else []:
                own = cam.get(key) if isinstance(cam, dict) else None
                if isinstance(own, dict) and own.get("type", section["type"]) == section["type"]:
                    cam[key] = {**section, **own}  # same backend: tune the section's settings
        return data

    def grounder_for(self, cam: CameraConfig) -> Any:
        return cam.grounder or self.grounder

    def codec_for(self, cam: CameraConfig) -> Any:
        return cam.codec or self.codec

    def tracking_for(self, cam: CameraConfig) -> TrackingConfig:
        return cam.tracking or self.tracking
