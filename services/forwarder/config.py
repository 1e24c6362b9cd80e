"""Configuration of the forwarder: what it reads, where its queues live, and its sinks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from shared.config import BrokerConfig, SessionConfig, StrictModel, TopicId, topic_id


class QueueLimits(StrictModel):
    """Bounds of one sink's queue. When one is passed, the oldest results go first (events
    only when no result is left), and every drop is counted."""

    max_messages: int = Field(1_000_000, ge=1)
    max_bytes: int = Field(1 << 30, ge=1024)
    max_age_s: float = Field(7 * 86400.0, gt=0)


class SinkBase(StrictModel):
    name: str
    batch_size: int = Field(500, ge=1, le=10_000)  # queued messages sent in one go
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(5, ge=1)  # a message the receiver refuses, then dead-lettered
    queue: QueueLimits = Field(default_factory=lambda: QueueLimits.model_validate({}))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return topic_id(value, "sink name")


# MQTT v5 PUBACK reason codes that say "this message, never": not authorized, topic name
# invalid, packet too large, payload format invalid. Other refusals (quota exceeded,
# unspecified, implementation specific) may pass on a later attempt.
MQTT_REFUSED_AT_ONCE = (0x87, 0x90, 0x95, 0x99)


class MqttSink(SinkBase):
    """Another broker (the cloud one), same topic names, QoS 1, its own credentials and TLS."""

    kind: Literal["mqtt"]
    broker: BrokerConfig
    client_id: str | None = None  # default: {site}-{instance}-{name}
    # PUBACK codes that dead-letter a message at once; any other refusal is retried up to
    # max_attempts times. Leave 0x87 out where the cloud's ACLs are granted after sites start.
    refused_at_once: list[int] = Field(
        default_factory=lambda: list(MQTT_REFUSED_AT_ONCE), max_length=64
    )


class HttpSink(SinkBase):
    """POST of JSON batches; any 2xx confirms the batch."""

    kind: Literal["http"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    token_env: str | None = None  # `Authorization: Bearer <value of this variable>`
    ca_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value


class SqliteSink(SinkBase):
    """A local history: table `results` (one row per result) and table `events`."""

    kind: Literal["sqlite"]
    path: Path


class FileSink(SinkBase):
    """JSON lines, one per result or event; rotated to `.1` … `.{keep}` past `max_bytes`."""

    kind: Literal["file"]
    path: Path
    max_bytes: int = Field(100 << 20, ge=1024)
    keep: int = Field(5, ge=1)


class SparkplugSink(SinkBase):
    """The site as a Sparkplug B edge node (docs/sparkplug.md): each flow a device, its results,
    model and decisions as metrics; births, DDATA on change, NDEATH as the will, rebirth on NCMD."""

    kind: Literal["sparkplug"]
    broker: BrokerConfig  # the broker SCADA/MES host applications read (Ignition's MQTT Engine)
    group_id: TopicId
    edge_node_id: TopicId | None = None  # default: the site id
    client_id: str | None = None  # default: {site}-{instance}-{name}


Sink = Annotated[
    MqttSink | HttpSink | SqliteSink | FileSink | SparkplugSink, Field(discriminator="kind")
]


class ForwarderConfig(SessionConfig):
    flows: list[str] | None = None  # default: every flow of the site
    queue_dir: Path = Path("var/forwarder")  # one queue file per sink: {queue_dir}/{name}.db
    session_expiry_s: int = Field(7 * 86400, ge=60)  # how long the site broker keeps our session
    dedupe_window: int = Field(100_000, ge=0)  # messages remembered to drop a redelivery
    sinks: list[Sink] = Field(min_length=1)

    @field_validator("flows")
    @classmethod
    def _flows(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [topic_id(f, "flow") for f in value]

    @model_validator(mode="after")
    def _unique_names(self) -> ForwarderConfig:
        names = [s.name for s in self.sinks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"sink names must be unique: {duplicates}")
        return self
