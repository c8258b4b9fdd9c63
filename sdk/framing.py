"""Frames <-> MQTT messages: turn one coded frame into the side/task/rest packets of DESIGN §2,
and turn a reassembled frame back into the codec's ``decompress`` input.

A region that serves several tasks is carried in each of those tasks' substreams, so every task
substream decodes on its own (given side). A stream codec (``Codec.task_streams``: one payload
per task, e.g. the video codec) has its task payloads sent as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from discover.sdk.codecs.base import CodedFrame, Compressed
from discover.sdk.errors import PacketError
from discover.sdk.limits import MAX_REGIONS
from discover.sdk.packet import FLAG_INTRA, Kind, Signer, fragment
from discover.sdk.reassembly import AssembledFrame
from discover.sdk.regions import Region
from discover.sdk.stream import SideContext, SideInfo, StreamMeta, pack_items, unpack_items
from discover.sdk.topics import substream_topic


def frame_messages(
    prefix: str,
    meta: StreamMeta,
    frame_index: int,
    capture_us: int,
    regions: list[Region],
    coded: Compressed | Mapping[str, Any],
    *,
    max_packet: int,
    intra: bool | None = None,
    signer: Signer | None = None,
    side_context: SideContext | None = None,
) -> list[tuple[str, bytes]]:
    """The ``(topic, packet)`` list of one frame: side first, then each task, then rest.
    ``intra`` defaults to the codec's ``stats.intra`` (False for a plain mapping); ``signer``
    (``StreamKey.signer(session)``) adds a MAC to every packet; ``side_context`` (the camera's
    :class:`SideContext`) predicts the region table from the previous frame's, else the table
    is sent in full."""
    if intra is None:
        stats = coded.get("stats")
        intra = bool(stats.intra) if stats is not None else False
    payloads = _task_payloads(meta, regions, coded)
    tasks_sent = tuple(t for t in meta.tasks if t in payloads)
    rest = coded.get("rest")
    info = SideInfo(meta.width, meta.height, tasks_sent, rest is not None, regions,
                    coded["side"], intra)
    side = side_context.encode(info, meta, frame_index) if side_context else info.encode(meta)
    flags = FLAG_INTRA if intra else 0
    cam = meta.camera

    def packets(kind: Kind, name: str, payload: bytes) -> list[tuple[str, bytes]]:
        topic = substream_topic(prefix, cam, f"task/{name}" if kind is Kind.TASK else kind.name.lower())
        return [(topic, p) for p in fragment(cam, frame_index, capture_us, kind, name, payload,
                                             flags=flags, max_packet=max_packet,
                                             signer=signer)]

    out = packets(Kind.SIDE, "", side)
    for t in tasks_sent:
        out += packets(Kind.TASK, t, payloads[t])
    if rest is not None:
        out += packets(Kind.REST, "", rest)
    return out


def _task_payloads(meta: StreamMeta, regions: list[Region],
                   coded: Compressed | Mapping[str, Any]) -> dict[str, bytes]:
    """Each task's substream payload: a stream codec's own, or the task's regions packed."""
    streams = coded.get("tasks") or {}
    if streams:
        return {t: streams[t] for t in meta.tasks if t in streams}
    by_task: dict[str, dict[int, bytes]] = {t: {} for t in meta.tasks}
    for r in regions:
        blob = coded["regions"].get(r.rid)
        if blob is None:
            continue
        for t in r.tasks:
            by_task[t][r.rid] = blob
    return {t: pack_items(items) for t, items in by_task.items() if items}


def codec_input(frame: AssembledFrame, meta: StreamMeta,
                max_regions: int = MAX_REGIONS,
                task_streams: bool = False,
                side_context: SideContext | None = None) -> tuple[CodedFrame, SideInfo]:
    """What ``Codec.decompress`` takes, from a reassembled frame (which must have side).

    Region payloads from every task substream that arrived are merged; region ids the side
    table does not know are passed on so the codec reports them as errors. For a stream codec
    (``task_streams``) the task payloads go to the codec as they arrived. A region table
    predicted from the previous frame's needs the camera's ``side_context``.
    """
    if frame.side is None:
        raise PacketError("no_side")
    side = (side_context.decode(frame.side, meta, frame.frame_index, max_regions)
            if side_context else SideInfo.decode(frame.side, meta, max_regions))
    regions: dict[int, bytes] = {}
    for payload in ({} if task_streams else frame.tasks).values():
        regions.update(unpack_items(payload))
    coded = CodedFrame(side.codec_data, side.regions, (side.width, side.height), regions,
                       frame.rest, dict(frame.tasks) if task_streams else {})
    return coded, side
