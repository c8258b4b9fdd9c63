"""The codec interface: typed frames in and out, so the agent, the framing and the sink never
read a codec's internals.

A codec instance codes one camera stream (it may keep state between frames: temporal
prediction, a video encoder). Two payload shapes share the substream contract (DESIGN §2)::

    frame, regions, send_rest --compress--> Compressed
        side     bytes                       always sent (z, thumbnail, nothing)
        regions  {rid: bytes}                region codecs (learned, classical): one payload
                                             per region, each decodable given side; the
                                             framing packs each task's regions into task/<t>
        tasks    {task: bytes}               stream codecs (video, ``task_streams``): one
                                             payload per task, sent as task/<t> as it is
        rest     bytes | None                the human view, when asked
        stats    FrameStats                  intra?, per-frame counters for the edge summary

    CodedFrame (what arrived: side, regions or tasks, rest + the side table and frame size)
        --decompress--> Decoded
        x_hat          HxWx3 uint8 BGR from what arrived
        region_pixels  {rid: crop}
        has_rest, background, needs_refresh (a reference was missing: ask for a refresh)
        errors         {rid or SubstreamError: reason}   a bad region/substream fails alone
        extra          codec-specific outputs (learned: y_hat, sd_latent, ...)

The three dataclasses also answer ``obj["key"]`` / ``obj.get("key")`` (``Decoded`` looks in
``extra`` too), so composers and scripts written against the earlier dict results keep working.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar

import numpy as np
from discover.sdk.regions import Region
from discover.sdk.registry import Backend, BackendConfig, Registry


class SubstreamError(IntEnum):
    """Keys of ``Decoded.errors`` for a failure that is not one region's (region ids are >= 0)."""

    REST = -1  #: rest did not decode
    SIDE = -2  #: side (or the codec's side data) did not decode: nothing did
    TASK = -3  #: a task stream did not decode (stream codecs; the reason names the task)


class _Fields:
    """Read access by key (``obj["side"]``, ``obj.get``, ``{**obj}``) for callers written
    against the dict results this interface replaced."""

    def _extra(self) -> Mapping[str, Any]:
        return {}

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)  # type: ignore[arg-type]
                if f.name != "extra"] + list(self._extra())

    def __getitem__(self, key: str) -> Any:
        if key in self._extra():
            return self._extra()[key]
        if key == "extra" or key not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "extra" or key not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass
class FrameStats:
    """What the edge sums per frame, whatever the codec: ``intra`` (decodable without earlier
    frames; sent as the side header's intra flag) and named counters (``modes``: the learned
    codec's region modes intra/residual/skip, the video codec's keyframe/predicted chunks)."""

    intra: bool = True
    modes: dict[str, int] = field(default_factory=dict)
    #: codec-specific facts about the frame, not summed (learned: z_new, a new hyperprior sent)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Compressed(_Fields):
    """One coded frame as the edge sends it (module docstring)."""

    side: bytes
    regions: dict[int, bytes] = field(default_factory=dict)
    rest: bytes | None = None
    tasks: dict[str, bytes] = field(default_factory=dict)
    stats: FrameStats = field(default_factory=FrameStats)

    def __post_init__(self) -> None:
        if self.regions and self.tasks:
            raise ValueError("a codec sends either region payloads or task streams, not both")


@dataclass
class CodedFrame(_Fields):
    """What ``decompress`` takes: the payloads that arrived, the side table and the size."""

    side: bytes
    table: list[Region]
    size: tuple[int, int]
    regions: dict[int, bytes] = field(default_factory=dict)
    rest: bytes | None = None
    tasks: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, coded: Compressed | Mapping[str, Any], table: Sequence[Region],
           size: tuple[int, int]) -> CodedFrame:
        """Everything of ``coded`` arrived (the in-process loop: benchmarks, tests)."""
        return cls(coded["side"], list(table), size, dict(coded.get("regions") or {}),
                   coded.get("rest"), dict(coded.get("tasks") or {}))

    @classmethod
    def coerce(cls, coded: CodedFrame | Mapping[str, Any]) -> CodedFrame:
        """``coded`` itself, or one built from a mapping with the same keys."""
        if isinstance(coded, CodedFrame):
            return coded
        return cls(coded.get("side") or b"", list(coded.get("table") or []), coded["size"],
                   dict(coded.get("regions") or {}), coded.get("rest"),
                   dict(coded.get("tasks") or {}))


@dataclass
class Decoded(_Fields):
    """One decoded frame (module docstring)."""

    x_hat: np.ndarray
    region_pixels: dict[int, np.ndarray] = field(default_factory=dict)
    has_rest: bool = False
    errors: dict[int, str] = field(default_factory=dict)
    background: np.ndarray | None = None
    needs_refresh: bool = False
    #: x_hat is a decoded whole frame between rests (a stream codec's machine view), not a
    #: canvas where only the regions are right: a composer may show it outside the regions
    whole_frame: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def _extra(self) -> Mapping[str, Any]:
        return self.extra


class CodecConfig(BackendConfig):
    """Common codec options."""


class Codec(Backend):
    """Base class of codecs."""

    Config: ClassVar[type[CodecConfig]]
    #: boxes are snapped outwards to multiples of this (the latent grid of learned codecs)
    align: int = 1
    #: True: ``compress`` gives one payload per task (``Compressed.tasks``) and ``decompress``
    #: takes them as sent; False: one payload per region, packed per task by the framing
    task_streams: ClassVar[bool] = False

    def __init__(self, config: CodecConfig) -> None:
        self.config = config
        self.tasks: tuple[str, ...] = ()

    @property
    def predictive(self) -> bool:
        """Whether a frame decodes only given earlier frames (temporal prediction). The side's
        region table is then predicted from the previous frame's too; a codec whose frames
        decode alone keeps full tables, so a sink restarted mid-stream loses nothing."""
        return False

    @property
    def rest_redundant(self) -> bool:
        """Whether a task stream already carries the whole frame at the human view's quality,
        so a ``rest`` substream would only repeat it: the edge then sends none and a viewer
        composes from the task stream (``Decoded.whole_frame``). Region codecs: never."""
        return False

    def start(self, tasks: Sequence[str], fps: float) -> None:
        """The camera's tasks and frame rate, before its first frame (a stream codec opens one
        encoder per task)."""
        self.tasks = tuple(tasks)

    def descriptor(self) -> dict[str, Any]:
        """What goes into the stream's ``meta`` so a sink can build the matching decoder."""
        return {"type": self.key, "config": self.config.model_dump(mode="json"),
                "checkpoint": self.checkpoint_hash()}

    def request_refresh(self) -> None:
        """A sink asked (over the control topic) for a frame it can decode without history;
        codecs without temporal prediction have nothing to do."""

    def checkpoint_hash(self) -> str | None:
        """Content hash of the weights, None for codecs without weights."""
        return None

    def close(self) -> None:
        """The camera stopped: release encoders (a stream codec ends its streams). Codecs that
        hold nothing have nothing to do."""

    @abstractmethod
    def compress(self, frame: np.ndarray, regions: list[Region], send_rest: bool) -> Compressed:
        """Code one BGR uint8 frame."""

    @abstractmethod
    def decompress(self, coded: CodedFrame | Mapping[str, Any]) -> Decoded:
        """Decode what arrived of one frame (a mapping is taken through CodedFrame.coerce)."""


CODECS: Registry[Codec] = Registry("codec")
"""Codecs, chosen by ``codec.type`` in the config. One import line per backend."""
