"""Broker connection settings: URL, credentials (environment or file only), TLS, QoS."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from discover.sdk.errors import DiscoverError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

PASSWORD_ENV = "DISCOVER_BROKER_PASSWORD"


class TLSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ca_file: Path | None = Field(None, description="CA bundle to verify the broker (default: system)")
    cert_file: Path | None = Field(None, description="client certificate for mutual TLS")
    key_file: Path | None = Field(None, description="client key for mutual TLS")
    insecure: bool = Field(False, description="skip hostname verification (testing only)")


class BrokerConfig(BaseModel):
    """Where the MQTT broker is and how to talk to it."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field("mqtt://127.0.0.1:1883",
                     description="mqtt://[user@]host[:port] or mqtts:// for TLS")
    username: str | None = None
    password_file: Path | None = Field(
        None, description=f"file holding the password (or set {PASSWORD_ENV}); never logged")
    tls: TLSConfig | None = None
    qos: int = Field(1, ge=0, le=2)
    keepalive: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    protocol: str = Field("3.1.1", pattern=r"^(3\.1\.1|5)$")
    persistent: bool = Field(True, description="persistent MQTT sessions for edges and sinks "
                             "(stable client ids, clean start off): the broker keeps a "
                             "subscriber's QoS 1 messages while it is away")
    session_expiry_s: int = Field(3600, ge=0, description="MQTT 5: how long the broker keeps "
                                  "a session after its client left (3.1.1: until the broker's "
                                  "persistent_client_expiration)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_url(v)
        return v

    @property
    def host(self) -> str:
        return parse_url(self.url)[1]

    @property
    def port(self) -> int:
        return parse_url(self.url)[2]

    @property
    def use_tls(self) -> bool:
        return parse_url(self.url)[0] == "mqtts" or self.tls is not None

    def resolved_username(self) -> str | None:
        return self.username or parse_url(self.url)[3]

    def password(self) -> SecretStr | None:
        """The password, from the environment or ``password_file`` (never from the URL)."""
        if os.environ.get(PASSWORD_ENV):
            return SecretStr(os.environ[PASSWORD_ENV])
        if self.password_file is not None:
            try:
                return SecretStr(self.password_file.read_text().strip())
            except OSError as e:
                raise DiscoverError(
                    f"cannot read broker password file {self.password_file}: {e.strerror}"
                ) from None
        return None

    def describe(self) -> str:
        """host:port for messages (no credentials)."""
        return f"{self.host}:{self.port}"


def parse_url(url: str) -> tuple[str, str, int, str | None]:
    """(scheme, host, port, username) of a broker URL; DiscoverError with the fix if bad."""
    fix = "use mqtt://host:port (or mqtts://host:port for TLS)"
    raw = url if "://" in url else f"mqtt://{url}"
    shown = redact(url)
    try:
        u = urlsplit(raw)
        port = u.port
    except ValueError:
        raise DiscoverError(f"bad broker URL {shown!r}: {fix}") from None
    scheme = {"mqtt": "mqtt", "tcp": "mqtt", "mqtts": "mqtts", "ssl": "mqtts"}.get(u.scheme)
    if scheme is None or not u.hostname or u.path not in ("", "/"):
        raise DiscoverError(f"bad broker URL {shown!r}: {fix}")
    if u.password:
        raise DiscoverError(
            f"broker URL must not hold a password: set {PASSWORD_ENV} or broker.password_file"
        )
    return scheme, u.hostname, port or (8883 if scheme == "mqtts" else 1883), u.username


def redact(url: str) -> str:
    """The URL with everything before the host's last ``@`` (user and password, whatever
    characters they hold) replaced by ``***`` (for messages)."""
    scheme, sep, rest = url.rpartition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"
