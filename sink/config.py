"""The sink section of a deployment file: what to take, how to compose, where results go."""

from __future__ import annotations

import socket
import zlib
from pathlib import Path
from typing import Literal

from discover.sdk.limits import MAX_FRAME_PIXELS, MAX_REGIONS
from discover.sdk.topics import check_name
from discover.sink.composers import COMPOSERS
from discover.sink.http.config import HttpSection
from discover.sink.tasks import TASK_MODELS
from pydantic import BaseModel, ConfigDict, Field, field_validator

ComposerChoice = COMPOSERS.config_union()
TaskModelChoice = TASK_MODELS.config_union()


class SinkSection(BaseModel):
    """Everything a sink worker needs besides the broker."""

    model_config = ConfigDict(extra="forbid")
    camera: str = Field("+", description="camera id, or '+' for every camera")
    tasks: list[str] = Field(default_factory=lambda: ["detection"], min_length=1,
                             description="task substreams to take")
    rest: bool = Field(False, description="also take the rest substream (full human view)")
    composer: ComposerChoice = Field(default_factory=lambda: COMPOSERS.parse_config("direct"))
    task_models: dict[str, TaskModelChoice] = Field(
        default_factory=dict, description="task -> model; tasks not listed use 'regions'")
    out: Path | None = Field(None, description="folder for frames and results (none: no files)")
    output: Literal["png", "mp4", "none"] = Field("png", description="how frames are written")
    publish_results: bool = Field(True, description="publish results to <prefix>/<camera>/results/<task>")
    frame_timeout_s: float = Field(2.0, gt=0, description="wait this long for a frame's "
                                                         "substreams, then decode what came")
    max_frames: int | None = Field(None, ge=1, description="stop after this many frames")
    refresh_interval_s: float = Field(1.0, gt=0, description="at most one intra-refresh request "
                                      "per camera this often, when a temporal stream's "
                                      "references are missing (late join, loss)")
    idle_timeout_s: float | None = Field(None, gt=0, description="stop after this long without data")
    connect_timeout_s: float = Field(30.0, gt=0)
    shard: str = Field("0/1", pattern=r"^\d+/\d+$",
                       description="I/N: take only cameras whose id hashes to I mod N, so N "
                                   "workers split the cameras with no coordination")
    client_id: str | None = Field(None, max_length=128, description="MQTT client id of this "
                                  "worker's persistent session (default: derived from its "
                                  "settings, so a restarted worker resumes its session; give "
                                  "two workers with the same settings different ids)")
    max_pending_frames: int = Field(64, ge=1, description="per camera, before eviction")
    max_pending_mb: float = Field(256.0, gt=0, description="all cameras, before eviction")
    max_frame_pixels: int = Field(MAX_FRAME_PIXELS, ge=1, description="refuse a stream whose "
                                  "descriptor declares a larger frame (width x height)")
    max_cameras: int = Field(64, ge=1, description="cameras one worker holds state for; "
                             "messages of further ones are refused until some go idle")
    camera_idle_s: float = Field(300.0, gt=0, description="release a camera's decoder and "
                                 "pending frames after this long without a message")
    max_regions: int = Field(MAX_REGIONS, ge=1, le=65535,
                             description="drop a frame whose side table lists more regions")
    codec_device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="where this sink decodes (a stream never chooses the sink's device)")
    codec_threads: int | None = Field(None, ge=1, le=1024, description="decoder CPU threads "
                                      "(default: torch's; a stream never chooses them)")
    http: HttpSection = Field(default_factory=HttpSection, description="live web view, API, "
                              "/metrics and restream (sink/http)")

    @field_validator("camera")
    @classmethod
    def _camera(cls, v: str) -> str:
        return v if v == "+" else check_name(v, "camera id")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        return [check_name(t, "task name") for t in dict.fromkeys(v)]

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str) -> str:
        i, n = (int(x) for x in v.split("/"))
        if n < 1 or i >= n:
            raise ValueError("shard I/N needs 0 <= I < N")
        return v

    def session_id(self, prefix: str) -> str:
        """The MQTT client id: ``client_id``, or one derived from the host, the prefix and
        everything this worker takes (camera, tasks, shard, output), stable across restarts.
        Two workers with the same settings on one host would take each other's session over:
        give them different ``client_id``."""
        if self.client_id:
            return self.client_id
        digest = zlib.crc32(f"{socket.gethostname()}\0{prefix}\0{self.model_dump_json()}".encode())
        cam = "all" if self.camera == "+" else self.camera
        return f"discover-sink-{cam}-{self.shard.replace('/', 'of')}-{digest:08x}"

    def in_shard(self, camera: str) -> bool:
        i, n = (int(x) for x in self.shard.split("/"))
        return zlib.crc32(camera.encode()) % n == i

    @property
    def wants_rest(self) -> bool:
        return self.rest or COMPOSERS.get(self.composer.type).needs_rest
