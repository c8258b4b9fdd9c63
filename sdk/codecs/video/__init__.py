"""The ``video`` codec family: per-task machine-view streams on PyAV's HEVC/H.264/AV1 encoders
(see codec.py)."""

from discover.sdk.codecs.video.codec import VideoCodec, VideoConfig

__all__ = ["VideoCodec", "VideoConfig"]
