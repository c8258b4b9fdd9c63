"""Classical region codec: every task region is its own WebP or JPEG crop.

The baseline the learned codec must beat, and the codec that needs no weights. ``side`` carries
a low-resolution thumbnail of the whole frame (the context a composer fills the background
from), ``rest`` the full frame at high quality.

::

    frame --resize 1/thumb_scale--> imencode --> side
    frame[region] ------------------> imencode --> regions[rid]      (one image per region)
    frame -------------------------> imencode --> rest              (every N frames)

    decode: upscaled thumbnail (or rest when it came) with the region crops pasted back
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import cv2
import numpy as np
from discover.sdk.codecs.base import (
    CODECS,
    Codec,
    CodecConfig,
    CodedFrame,
    Compressed,
    Decoded,
    SubstreamError,
)
from discover.sdk.regions import Region
from pydantic import Field


class ClassicalConfig(CodecConfig):
    type: Literal["classical"] = "classical"
    format: Literal["webp", "jpeg"] = Field("webp", description="image coder for crops and rest")
    quality: int = Field(75, ge=1, le=100, description="quality of the task region crops")
    thumb_scale: int = Field(8, ge=2, le=64, description="side thumbnail is 1/thumb_scale size")
    thumb_quality: int = Field(40, ge=1, le=100)
    rest_quality: int = Field(85, ge=1, le=100, description="quality of the full-frame rest")


def _encode(img: np.ndarray, fmt: str, quality: int) -> bytes:
    if fmt == "webp":
        ok, buf = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, quality])
    else:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {img.shape} image as {fmt}")
    return buf.tobytes()


def _decode(data: bytes) -> np.ndarray | None:
    if not data:
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return img if img is not None and img.ndim == 3 else None


@CODECS.register
class ClassicalCodec(Codec):
    key = "classical"
    Config = ClassicalConfig
    config: ClassicalConfig

    def compress(self, frame: np.ndarray, regions: list[Region], send_rest: bool) -> Compressed:
        c = self.config
        h, w = frame.shape[:2]
        tw, th = max(1, round(w / c.thumb_scale)), max(1, round(h / c.thumb_scale))
        thumb = cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA)
        crops = {r.rid: _encode(frame[r.box[1]:r.box[3], r.box[0]:r.box[2]], c.format, c.quality)
                 for r in regions}
        return Compressed(side=_encode(thumb, c.format, c.thumb_quality), regions=crops,
                          rest=_encode(frame, c.format, c.rest_quality) if send_rest else None)

    def decompress(self, coded: CodedFrame | Mapping[str, Any]) -> Decoded:
        f = CodedFrame.coerce(coded)
        w, h = f.size
        errors: dict[int, str] = {}
        base = _decode(f.rest) if f.rest else None
        has_rest = base is not None and base.shape[:2] == (h, w)
        if f.rest and not has_rest:
            errors[SubstreamError.REST] = "rest payload did not decode"
        if not has_rest:
            thumb = _decode(f.side)
            base = (cv2.resize(thumb, (w, h), interpolation=cv2.INTER_LINEAR) if thumb is not None
                    else np.zeros((h, w, 3), np.uint8))
            if thumb is None:
                errors[SubstreamError.SIDE] = "side thumbnail did not decode"
        x_hat = base.copy()
        pixels: dict[int, np.ndarray] = {}
        boxes = {r.rid: r.box for r in f.table}
        for rid, blob in f.regions.items():
            box = boxes.get(rid)
            if box is None:
                errors[rid] = "region not in the region table"
                continue
            x0, y0, x1, y1 = box
            crop = _decode(blob)
            if crop is None or crop.shape[:2] != (y1 - y0, x1 - x0):
                errors[rid] = "region payload did not decode"
                continue
            pixels[rid] = crop
            x_hat[y0:y1, x0:x1] = crop
        return Decoded(x_hat=x_hat, region_pixels=pixels, has_rest=has_rest, errors=errors,
                       background=base)
