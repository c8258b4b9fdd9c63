"""One elementary video stream per substream: a low-delay PyAV encoder that gives exactly one
chunk per coded frame, and the matching decoder that resyncs at the next keyframe.

Chunk layout (the payload of one substream for one frame)::

    byte 0: bit 0 keyframe, bits 1-7 sequence number of this substream's chunks (mod 128)
    rest:   the encoder's packet for that frame (Annex B / OBU; parameter sets in-band on
            keyframes, so every keyframe starts a decodable stream)

The sequence number lets a decoder see a lost chunk (the next one is not ``seq + 1``) and stop
decoding predicted frames until a keyframe, instead of showing garbage: it reports that it
needs a refresh, and the sink asks the edge on ``control``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from discover.sdk.codecs.video.roi import ROI_ENCODERS, Box, encoder_params, tag_roi
from discover.sdk.errors import DiscoverError

log = logging.getLogger(__name__)

SEQ_MOD = 128
KEY = 0x01


@dataclass(frozen=True)
class EncoderSpec:
    """How one family is coded: ffmpeg encoder, decoders to try, whether ROI applies."""

    encoder: str
    decoders: tuple[str, ...]

    @property
    def roi(self) -> bool:
        return self.encoder in ROI_ENCODERS


FAMILIES = {
    "hevc": EncoderSpec("libx265", ("hevc",)),
    "h264": EncoderSpec("libx264", ("h264",)),
    "av1": EncoderSpec("libsvtav1", ("libdav1d", "av1")),
}


def join_params(*parts: str) -> str:
    """``key=value`` groups joined by ':' as x265/x264/SVT-AV1 parameter strings take them,
    empty parts left out (later parts win where a key repeats)."""
    return ":".join(p for p in parts if p)


def encoder_options(spec: EncoderSpec, crf: int, preset: str, gop: int, roi: bool,
                    threads: int, params: str = "", machine: bool = False) -> dict[str, str]:
    """Low-delay options: no B-frames, no lookahead, one frame thread (one packet out per frame
    in), keyframes every ``gop`` frames (0: only on request) plus on request. x265 gets
    ``ipratio=3``: without lookahead there is no cu-tree to spend more on what later frames
    reference, so the keyframe, which a static background is then skipped against, gets it
    (development frames, docs/video-codec.md: 2 against x265's 1.4 gave mAP@0.5 0.920 -> 0.935
    at CRF 38 for +3 % rate; 3 against 2 a further -6 % BD-rate on detection at full scale,
    +0.02-0.05 mAP at +2 % rate at half scale, -13 % rate at equal PSNR). A ``machine`` stream
    (a task's view, read by a model, not a person) gets x265's psycho-visual tuning off
    (``psy-rd=0:psy-rdoq=0``): it spends bits on texture and grain that people notice and
    detectors do not (development frames: -5 % rate at the same CRF, BD-rate -6.5 % on detection
    and -4.5 % on PSNR, about 10 % less encoding time; docs/video-codec.md). SVT-AV1's
    machine streams go without its in-loop filters for people (CDEF, loop restoration), which
    smooth away texture a detector reads, and ``medium`` is its preset 6 (development frames,
    against preset 8 with the filters: person AP BD-rate -10.6 against +5.6 %, all classes
    +23.7 against +43.6 %, against full-frame x265; 18-20 against 11 ms a frame)."""
    keyint = str(gop) if gop else "-1"
    if spec.encoder == "libx265":
        x = join_params("log-level=error:info=0:bframes=0:rc-lookahead=0:frame-threads=1",
                        f"pools={threads}:repeat-headers=1:keyint={gop or 100000}",
                        "scenecut=0:ipratio=3", "psy-rd=0:psy-rdoq=0" if machine else "",
                        encoder_params(spec.encoder, preset, roi), params)
        return {"crf": str(crf), "preset": preset, "forced-idr": "1", "x265-params": x}
    if spec.encoder == "libx264":
        return {"crf": str(crf), "preset": preset, "tune": "zerolatency", "forced-idr": "1",
                "x264-params": join_params(f"keyint={gop or 100000}:scenecut=0",
                                           f"threads={threads}", params)}
    # SVT-AV1: presets are numbers (0 slowest .. 13 fastest); low-delay prediction structure
    os.environ.setdefault("SVT_LOG", "1")  # errors only, not the config banner
    svt_preset = {"ultrafast": "12", "superfast": "11", "veryfast": "10", "faster": "9",
                  "fast": "8", "medium": "6", "slow": "4"}.get(preset, preset)
    return {"crf": str(crf), "preset": svt_preset, "g": keyint,
            "svtav1-params": join_params(f"pred-struct=1:lp={threads}:scd=0",
                                         "enable-cdef=0:enable-restoration=0" if machine else "",
                                         params)}


class StreamEncoder:
    """Codes frames of one size into chunks (one per frame, module docstring)."""

    def __init__(self, family: str, width: int, height: int, crf: int, preset: str, gop: int,
                 roi_offset: float, threads: int = 1, fps: float = 10.0, params: str = "",
                 machine: bool = False) -> None:
        import av

        self.spec = FAMILIES[family]
        self.roi_offset = roi_offset if self.spec.roi else 0.0
        ctx = av.CodecContext.create(self.spec.encoder, "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        rate = max(1, round(fps))
        ctx.time_base, ctx.framerate = Fraction(1, rate), Fraction(rate, 1)
        ctx.options = encoder_options(self.spec, crf, preset, gop, bool(self.roi_offset),
                                      threads, params, machine)
        try:
            ctx.open()
        except Exception as e:  # noqa: BLE001 - the build may lack the encoder or an option
            raise DiscoverError(f"video codec: could not open {self.spec.encoder} ({e}); choose "
                                "another codec.encoder (hevc, h264, av1)") from None
        self.ctx, self.size = ctx, (width, height)
        self.count = 0

    def encode(self, image: np.ndarray, boxes: Sequence[Box], key: bool) -> tuple[bytes, bool]:
        """One BGR frame of this stream's size -> (chunk, whether it is a keyframe)."""
        import av

        vf = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        if self.roi_offset:  # a stream without ROI never carries ROI side data, so no trap
            vf.pts, vf.time_base = self.count, self.ctx.time_base
            vf = tag_roi(vf, boxes, self.roi_offset)
        return self.encode_frame(vf, key)

    def encode_frame(self, vf: Any, key: bool) -> tuple[bytes, bool]:
        """One yuv420p av.VideoFrame, with any ROI side data already attached (for callers
        that choose offsets per frame themselves) -> (chunk, whether it is a keyframe)."""
        import av

        vf.pts, vf.time_base = self.count, self.ctx.time_base
        if key:
            vf.pict_type = av.video.frame.PictureType.I
        packets = self.ctx.encode(vf)
        if not packets:
            raise RuntimeError(f"{self.spec.encoder} held frame {self.count} back: the "
                               "low-delay options did not take")
        is_key = any(p.is_keyframe for p in packets)
        head = bytes([(self.count % SEQ_MOD) << 1 | (KEY if is_key else 0)])
        self.count += 1
        return head + b"".join(bytes(p) for p in packets), is_key

    def close(self) -> None:
        """End the stream: SVT-AV1 logs an error when it is torn down without one, and the
        packets a flush gives back belong to no frame any sink waits for, so they are dropped."""
        import av

        with contextlib.suppress(av.error.FFmpegError, ValueError):  # flushed already
            self.ctx.encode(None)


class StreamDecoder:
    """Decodes one substream's chunks; waits for a keyframe after a gap or an error."""

    def __init__(self, family: str) -> None:
        self.spec = FAMILIES[family]
        self.ctx: Any = None
        self.next_seq: int | None = None  # None: not in sync, a keyframe is needed

    def _open(self) -> Any:
        import av

        for name in self.spec.decoders:
            try:
                ctx = av.CodecContext.create(name, "r")
                ctx.thread_count = 1  # frame threads would hold frames back
                ctx.open()
                return ctx
            except Exception:  # noqa: BLE001 - try the next decoder
                continue
        raise DiscoverError(f"video codec: no decoder among {list(self.spec.decoders)} in this "
                            "PyAV build")

    def decode(self, chunk: bytes) -> tuple[np.ndarray | None, str | None]:
        """(BGR image, None), or (None, why it was not decoded); after a gap or an error the
        stream is out of sync until a keyframe (``in_sync`` False)."""
        import av

        if len(chunk) < 2:
            self.next_seq = None
            return None, "empty chunk"
        seq, key = chunk[0] >> 1, bool(chunk[0] & KEY)
        if key:
            self.ctx = self._open()  # a keyframe starts afresh, whatever came before
        elif self.next_seq is None or seq != self.next_seq or self.ctx is None:
            self.next_seq = None
            return None, "waiting for a keyframe (chunk lost or joined mid-stream)"
        try:
            frames = self.ctx.decode(av.Packet(chunk[1:]))
        except (av.error.FFmpegError, ValueError) as e:
            self.next_seq = None
            return None, f"decode error ({e})"
        if not frames:
            self.next_seq = None
            return None, "decoder gave no frame"
        self.next_seq = (seq + 1) % SEQ_MOD
        return frames[-1].to_ndarray(format="bgr24"), None

    @property
    def in_sync(self) -> bool:
        return self.next_seq is not None
