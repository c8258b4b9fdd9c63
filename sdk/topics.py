"""MQTT topic layout (DESIGN §2)::

    <prefix>/<camera>/meta            retained JSON stream descriptor
    <prefix>/<camera>/status          retained "online"/"offline" JSON (last will)
    <prefix>/<camera>/side            frame header, region table, codec side data
    <prefix>/<camera>/task/<task>     latents / crops of that task's regions
    <prefix>/<camera>/rest            everything outside the task regions
    <prefix>/<camera>/results/<task>  sink output, JSON
    <prefix>/<camera>/control         sink -> edge requests, JSON (``{"request": "refresh"}``:
                                      the next frame intra, for temporal codecs)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from discover.sdk.errors import DiscoverError

DEFAULT_PREFIX = "discover"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def is_name(value: str) -> bool:
    """Camera, task and prefix parts: 1-64 of letters, digits, '_', '.', '-' (no MQTT wildcards),
    and not ``.`` or ``..`` (camera ids name folders under a sink's ``--out``)."""
    return bool(_NAME.match(value)) and value not in (".", "..")


def check_name(value: str, what: str) -> str:
    """``value`` if :func:`is_name`, else a DiscoverError saying what a name may be."""
    if not is_name(value):
        raise DiscoverError(
            f"bad {what} {value!r}: use 1-64 letters, digits, '_', '.' or '-' (not '.' or '..')"
        )
    return value


def check_prefix(prefix: str) -> str:
    for part in prefix.split("/"):
        check_name(part, "topic prefix part")
    return prefix


def topic(prefix: str, camera: str, *parts: str) -> str:
    return "/".join((prefix, camera, *parts))


def substream_topic(prefix: str, camera: str, substream: str) -> str:
    """Topic of ``side``, ``rest`` or ``task/<name>``."""
    return f"{prefix}/{camera}/{substream}"


@dataclass(frozen=True)
class TopicParts:
    camera: str
    channel: str  # meta, status, side, rest, task/<t>, results/<t>


def parse_topic(prefix: str, value: str) -> TopicParts | None:
    """Split a topic under ``prefix``; None if it is not one of ours."""
    if not value.startswith(prefix + "/"):
        return None
    rest = value[len(prefix) + 1 :].split("/")
    if len(rest) < 2:
        return None
    camera, channel = rest[0], "/".join(rest[1:])
    if channel in ("meta", "status", "side", "rest", "control") or (
        len(rest) == 3 and rest[1] in ("task", "results")
    ):
        return TopicParts(camera, channel)
    return None


def sink_topics(prefix: str, camera: str, tasks: list[str], rest: bool) -> list[str]:
    """What a sink subscribes to: meta, status, side, its tasks, and rest only if it wants it."""
    t = [topic(prefix, camera, c) for c in ("meta", "status", "side")]
    t += [topic(prefix, camera, "task", name) for name in tasks]
    if rest:
        t.append(topic(prefix, camera, "rest"))
    return t
