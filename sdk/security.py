"""Signed streams: HMAC-SHA256 with a per-deployment shared secret (``security.key_file``).

Why HMAC and not Ed25519: the edges and sinks of one deployment are run by one operator, the
sinks also publish (results, refresh requests) and would need a private key for that anyway,
HMAC is in the standard library (no new native dependency on a camera gateway) and costs about
a microsecond a packet, where an Ed25519 verify costs ~50 us and a signature 64 bytes. What it
does not give: a sink holding the key can forge a stream, so give the key file only to
machines you trust as much as the cameras (see docs/security.md).

What is signed, each with its own subkey derived from the secret:

* every packet: a 16-byte MAC (truncated HMAC-SHA256) over the stream session, the camera and
  substream of its topic (not on the wire) and all packet bytes before the MAC (frame index,
  capture time, fragment, payload), so a packet cannot be moved to another camera, substream,
  frame or session, nor replayed into a later session;
* the retained ``meta``: ``auth`` = ``{"alg", "kid", "mac"}`` over the canonical JSON of the
  rest (sorted keys), so labels, tasks, codec and session are the edge's;
* control requests (sink -> edge): the same ``auth`` over the request, which names the edge's
  session and the time, so a request is honoured only in that session and for a short while.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from discover.sdk.errors import DiscoverError
from pydantic import BaseModel, ConfigDict, Field

ALG = "hmac-sha256"
MAC_SIZE = 16  # bytes of HMAC-SHA256 kept per packet (128 bits)
MIN_SECRET = 16  # bytes
KEY_ENV = "DISCOVER_SECURITY__KEY_FILE"
CONTROL_MAX_AGE_S = 30.0  # a signed control request older (or newer) than this is refused

#: outcome of checking a signed object, also the counter names
OK, UNSIGNED, WRONG_KEY, BAD_SIGNATURE = "ok", "unsigned", "wrong_key", "bad_signature"


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes a JSON object is signed as: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


class StreamKey:
    """A deployment's shared secret and what it signs."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET:
            raise ValueError(f"a stream key needs at least {MIN_SECRET} bytes")
        self._packet = self._derive(secret, b"packet")
        self._json = self._derive(secret, b"json")
        #: public key id: says which key signed, without revealing it
        self.kid = self._derive(secret, b"key-id").hex()[:16]

    @staticmethod
    def _derive(secret: bytes, label: bytes) -> bytes:
        return hmac.new(secret, b"discover-stream-v1/" + label, hashlib.sha256).digest()

    @classmethod
    def load(cls, path: str | Path) -> StreamKey:
        """Read a key file (any bytes, at least 16; surrounding whitespace is ignored)."""
        p = Path(path)
        try:
            secret = p.read_bytes().strip()
        except OSError as e:
            raise DiscoverError(f"cannot read key file {p}: {e.strerror}; create one with "
                                f"'head -c 32 /dev/urandom | base64 > {p.name}'") from None
        if len(secret) < MIN_SECRET:
            raise DiscoverError(f"key file {p} holds {len(secret)} bytes, a key needs at least "
                                f"{MIN_SECRET}; create one with 'head -c 32 /dev/urandom | "
                                "base64 > FILE'")
        return cls(secret)

    # -- packets ------------------------------------------------------------------------------

    def packet_mac(self, session: str, body: bytes) -> bytes:
        """MAC of one packet in a session; ``body`` is ``packet.mac_input(...)``: its topic's
        camera and substream and its bytes before the MAC."""
        m = hmac.new(self._packet, session.encode() + b"\0", hashlib.sha256)
        m.update(body)
        return m.digest()[:MAC_SIZE]

    def packet_ok(self, session: str, body: bytes, mac: bytes) -> bool:
        return hmac.compare_digest(self.packet_mac(session, body), mac)

    def signer(self, session: str):  # noqa: ANN201 - Callable[[bytes], bytes]
        """A function that signs packet bodies of this session (for the packetizer)."""
        return lambda body: self.packet_mac(session, body)

    # -- JSON objects (meta, control) ---------------------------------------------------------

    def _json_mac(self, kind: str, obj: dict[str, Any]) -> str:
        body = {k: v for k, v in obj.items() if k != "auth"}
        m = hmac.new(self._json, kind.encode() + b"\0" + canonical(body), hashlib.sha256)
        return m.hexdigest()

    def sign(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """``obj`` with ``auth`` added; ``kind`` (``meta``, ``control``) keeps one kind of
        signed object from passing as another."""
        return {**obj, "auth": {"alg": ALG, "kid": self.kid, "mac": self._json_mac(kind, obj)}}

    def check(self, kind: str, obj: dict[str, Any]) -> str:
        """``OK``, ``UNSIGNED``, ``WRONG_KEY`` (signed with another key) or ``BAD_SIGNATURE``."""
        auth = obj.get("auth")
        if not isinstance(auth, dict):
            return UNSIGNED
        if auth.get("alg") != ALG or auth.get("kid") != self.kid:
            return WRONG_KEY
        mac = auth.get("mac")
        try:
            ok = isinstance(mac, str) and hmac.compare_digest(self._json_mac(kind, obj), mac)
        except ValueError:  # NaN / Infinity cannot be canonical: not what we signed
            return BAD_SIGNATURE
        return OK if ok else BAD_SIGNATURE

    def sign_control(self, request: dict[str, Any], session: str) -> dict[str, Any]:
        return self.sign("control", {**request, "session": session, "time": time.time()})

    def check_control(self, request: dict[str, Any], session: str,
                      max_age_s: float = CONTROL_MAX_AGE_S) -> str:
        """As :meth:`check`, and ``stale`` for a request of another session or time."""
        verdict = self.check("control", request)
        if verdict != OK:
            return verdict
        t = request.get("time")
        if request.get("session") != session or not isinstance(t, int | float) \
                or abs(time.time() - t) > max_age_s:
            return "stale"
        return OK


class SecurityConfig(BaseModel):
    """``security:`` in the deployment file."""

    model_config = ConfigDict(extra="forbid")
    key_file: Path | None = Field(
        None, description="shared stream key (at least 16 bytes): edges sign, sinks refuse "
                          "unsigned or foreign streams; also --key-file or "
                          f"{KEY_ENV}. Never put the key itself in the config")


def load_key(path: str | Path | None) -> StreamKey | None:
    """The key of ``path``, else of ``DISCOVER_SECURITY__KEY_FILE``, else None (unsigned)."""
    path = path or os.environ.get(KEY_ENV) or None
    return StreamKey.load(path) if path else None


class StreamVerifier:
    """Checks messages of any camera against a key without reassembling them (``record`` and
    ``replay`` keep or forward only what verifies): a ``meta`` by its signature, which also
    gives the camera's session; a packet by its MAC under that session. Other channels
    (status, control, results) pass: a sink checks control itself and they carry no frames."""

    def __init__(self, key: StreamKey, prefix: str) -> None:
        self.key, self.prefix = key, prefix
        self.sessions: dict[str, str] = {}
        self.counters: Counter[str] = Counter()

    def check(self, topic_name: str, payload: bytes) -> str:
        """``ok`` or why the message is refused (also counted)."""
        from discover.sdk.errors import PacketError
        from discover.sdk.packet import decode_packet, signed_part
        from discover.sdk.stream import StreamMeta
        from discover.sdk.topics import parse_topic

        parts = parse_topic(self.prefix, topic_name)
        verdict = OK
        if parts is not None and parts.channel == "meta" and payload:
            try:
                self.sessions[parts.camera] = StreamMeta.from_json(payload, self.key).session
            except PacketError as e:
                verdict = e.reason
        elif parts is not None and (parts.channel in ("side", "rest")
                                    or parts.channel.startswith("task/")):
            session = self.sessions.get(parts.camera)
            try:
                p = decode_packet(payload, parts.camera, parts.channel)
                if session is None:
                    verdict = "unverifiable"
                elif not self.key.packet_ok(session, signed_part(payload, p.camera, p.substream),
                                            p.mac):
                    verdict = "unsigned" if not p.mac else BAD_SIGNATURE
            except PacketError as e:
                verdict = e.reason
        self.counters[verdict] += 1
        return verdict
