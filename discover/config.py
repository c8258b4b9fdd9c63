"""The deployment file: one YAML for a site (broker, prefix, edge cameras and backends, sink)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from discover.edge.config import EdgeSection
from discover.sdk.security import SecurityConfig
from discover.sdk.topics import DEFAULT_PREFIX, check_prefix
from discover.sdk.transport.broker import BrokerConfig
from discover.sink.config import SinkSection


class Deployment(BaseModel):
    """Top level of a deployment file (see configs/example-deployment.yaml)."""

    model_config = ConfigDict(extra="forbid")
    prefix: str = Field(DEFAULT_PREFIX, description="first topic level of every stream")
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    edge: EdgeSection = Field(default_factory=EdgeSection)
    sink: SinkSection = Field(default_factory=SinkSection)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_prefix(v)
