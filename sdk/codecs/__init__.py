"""Codecs, chosen by ``codec.type`` in the config. One import line per backend."""

from discover.sdk.codecs import classical, learned, video  # noqa: F401
from discover.sdk.codecs.base import (
    CODECS,
    Codec,
    CodecConfig,
    CodedFrame,
    Compressed,
    Decoded,
    FrameStats,
    SubstreamError,
)

__all__ = ["CODECS", "Codec", "CodecConfig", "CodedFrame", "Compressed", "Decoded",
           "FrameStats", "SubstreamError"]
