"""Recording files: MQTT messages with their arrival times, for replay at pace or into a sink.

Layout: the 8-byte magic ``b"DSCVREC1"``, then records of
``>dHIB`` (arrival seconds since the first record, topic length, payload length, retain flag),
the topic (UTF-8) and the payload. A file cut short (recorder killed) reads up to its last whole
record; a record declaring more bytes than the file still holds ends the reading there, so a
forged length (4 GB) is never allocated.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from discover.sdk.errors import DiscoverError

MAGIC = b"DSCVREC1"
_REC = struct.Struct(">dHIB")


@dataclass(frozen=True, slots=True)
class Record:
    t: float
    topic: str
    payload: bytes
    retain: bool = False


class RecordingWriter:
    """Append records to a new recording file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._f: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise DiscoverError(f"cannot write recording {self.path}: {e.strerror}") from None
        self._f.write(MAGIC)
        self._t0: float | None = None
        self.records = 0
        self.bytes = len(MAGIC)

    def write(self, arrival: float, topic: str, payload: bytes, retain: bool = False) -> None:
        if self._t0 is None:
            self._t0 = arrival
        raw = topic.encode()
        self._f.write(_REC.pack(arrival - self._t0, len(raw), len(payload), int(retain)))
        self._f.write(raw)
        self._f.write(payload)
        self.records += 1
        self.bytes += _REC.size + len(raw) + len(payload)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_recording(path: str | Path) -> Iterator[Record]:
    """Yield the records of a recording; a clear DiscoverError if it is not one."""
    p = Path(path)
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise DiscoverError(f"cannot read recording {p}: {e.strerror}; "
                            "pass a file written by 'discover record'") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if f.read(len(MAGIC)) != MAGIC:
            raise DiscoverError(f"{p} is not a DISCOVER recording (bad magic); "
                                "pass a file written by 'discover record'")
        while True:
            head = f.read(_REC.size)
            if len(head) < _REC.size:
                return
            t, tlen, plen, retain = _REC.unpack(head)
            if tlen + plen > size - f.tell():  # cut short (or a forged length): stop, allocate
                return                          # nothing the file does not hold
            topic = f.read(tlen)
            payload = f.read(plen)
            if len(topic) < tlen or len(payload) < plen:
                return
            try:
                name = topic.decode()
            except UnicodeDecodeError:
                raise DiscoverError(f"{p} is corrupt (bad topic bytes)") from None
            yield Record(t, name, payload, bool(retain))
