"""Configuration of mqtt-ingest: which foreign topics to read and how fields map to signals."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.mqtt_ingest.paths import parse_path
from shared.config import ServiceConfig, StrictModel, TopicId


def _path(value: str | None) -> str | None:
    if value is not None:
        parse_path(value)  # raises ValueError naming the bad part
    return value


class SignalMap(StrictModel):
    """One signal read from each message: a scalar, or an array of values (a waveform batch)."""

    name: TopicId
    path: str  # dotted path into the payload: `data.temp`, `values[0]`, `x`
    times_path: str | None = None  # array values: a parallel array of timestamps (same unit)
    period_us: float | None = Field(None, gt=0)  # array values: spacing after the timestamp
    period_path: str | None = None  # array values: a field giving the spacing in µs
    quality_path: str | None = None  # overrides the message-level quality for this signal

    _paths = field_validator("path", "times_path", "period_path", "quality_path")(_path)


class TimestampMap(StrictModel):
    path: str | None = None  # absent: the time the message arrived
    unit: Literal["s", "ms", "us", "ns", "iso"] = "ms"

    _paths = field_validator("path")(_path)


_PLACEHOLDER = re.compile(r"\{(\d+)\}")


class Input(StrictModel):
    """Either `signals` (fields of each payload), or one value per message named from its topic
    (`signal`: a template over the filter's `+` levels, and/or `signal_map`: topic → name)."""

    topic: str  # subscription filter on the broker, wildcards allowed
    source: TopicId  # readings are published on ef/{site}/raw/{source}
    format: Literal["auto", "json", "msgpack"] = "auto"  # auto: by content type, then sniffed
    timestamp: TimestampMap = Field(default_factory=lambda: TimestampMap.model_validate({}))
    quality_path: str | None = None  # 0/1/2 or good/uncertain/bad; absent: good
    signals: list[SignalMap] = Field(default_factory=list)
    signal: str | None = None  # e.g. "{2}_{3}": {i} is the i-th `+` level of `topic` (from 1)
    signal_map: dict[str, TopicId] | None = None  # exact topic → signal name, tried first
    value_path: str = "value"  # where the value is when the payload is an object

    _paths = field_validator("quality_path", "value_path")(_path)

    @model_validator(mode="after")
    def _one_way_to_name_signals(self) -> Input:
        per_topic = self.signal is not None or self.signal_map is not None
        if bool(self.signals) == per_topic:
            raise ValueError("an input needs either `signals` or `signal`/`signal_map`")
        names = [s.name for s in self.signals]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"signal names must be unique in one input: {duplicates}")
        if self.signal is not None:
            wildcards = self.topic.split("/").count("+")
            used = [int(i) for i in _PLACEHOLDER.findall(self.signal)]
            if not used:
                raise ValueError(f"signal template {self.signal!r} names no topic level ({{1}}...)")
            bad = [i for i in used if not 1 <= i <= wildcards]
            if bad:
                raise ValueError(
                    f"signal template {self.signal!r}: {{{bad[0]}}} but {self.topic!r} has "
                    f"{wildcards} `+` level(s)"
                )
        return self


class IngestConfig(ServiceConfig):
    inputs: list[Input] = Field(min_length=1)
    publish_qos: int = Field(1, ge=0, le=1)
    coalesce_ms: float = Field(5.0, ge=0, le=10_000)  # readings of one source: one batch per tick
