"""Configuration of one aligner instance: the broker settings every service has, plus the part of
its flow the aligner reads (the flow's name and its `align` section, docs/aligner.md).

The align spec lives here, with the service that runs it; the flow file model that composes it
with the model, the actions and the sinks is `edgefleet/flow.py`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared.codec import Encoding
from shared.config import SessionConfig, read_yaml, topic_id, validate
from shared.errors import ConfigError

Fill = Literal["hold", "linear", "nearest"]
Agg = Literal["mean", "min", "max", "rms", "last", "count", "std"]
OnMissing = Literal["skip", "nan", "default"]

NS_PER_MS = 1_000_000
MAX_SPAN_MS = 7 * 86_400_000  # a week: longer periods, delays and ages are typing errors


FlowName = Annotated[str, AfterValidator(lambda v: topic_id(v, "flow name"))]


class FeatureSpec(BaseModel):
    """One model input: a signal either filled at the sample time or aggregated over the period."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signal: str = Field(description="'source/signal': the raw topic's source id, then the name")
    fill: Fill | None = None
    agg: Agg | None = None
    max_age_ms: float | None = Field(default=None, gt=0, le=MAX_SPAN_MS)
    name: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_rule(self) -> FeatureSpec:
        source, sep, name = self.signal.partition("/")
        if not sep or not name:
            raise ValueError(f"signal must be 'source/signal', got {self.signal!r}")
        topic_id(source, "source")
        if (self.fill is None) == (self.agg is None):
            raise ValueError(f"feature {self.signal!r}: give exactly one of 'fill' or 'agg'")
        if self.fill is not None and self.max_age_ms is None:
            # No default on purpose: a stale value must never be reused without a stated limit.
            raise ValueError(
                f"feature {self.signal!r}: fill {self.fill!r} needs max_age_ms "
                "(the oldest value, or the longest gap for linear, that may be used)"
            )
        if self.agg is not None and self.max_age_ms is not None:
            raise ValueError(
                f"feature {self.signal!r}: max_age_ms applies to fill, not to agg "
                "(an aggregate only uses readings inside its period)"
            )
        return self

    @property
    def source(self) -> str:
        return self.signal.partition("/")[0]

    @property
    def label(self) -> str:
        """The feature's name in samples: `name`, else the signal (with the aggregate)."""
        if self.name is not None:
            return self.name
        return self.signal if self.agg is None else f"{self.signal}:{self.agg}"

    @property
    def max_age_ns(self) -> int | None:
        return None if self.max_age_ms is None else round(self.max_age_ms * NS_PER_MS)


class AlignSpec(BaseModel):
    """How the aligner turns a flow's raw streams into fixed-period samples."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    period_ms: float = Field(
        gt=0, le=MAX_SPAN_MS, description="grid step: samples at k × period on the epoch"
    )
    max_delay_ms: float = Field(
        ge=0, le=MAX_SPAN_MS, description="lateness allowance after each sample time"
    )
    window: int = Field(default=1, ge=1, description="W samples per model input")
    stride: int = Field(default=1, ge=1, description="one window every `stride` samples")
    on_missing: OnMissing = "skip"
    default: float | list[float] | None = None
    early_emit: bool = True
    accept_uncertain: bool = Field(
        default=True, description="use readings of uncertain quality (bad ones never are)"
    )
    encoding: Encoding = Field(
        default=Encoding.MSGPACK,
        description="of the samples published: msgpack, or json for consumers without msgpack",
    )
    features: list[FeatureSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> AlignSpec:
        if self.period_ns < 1_000:
            raise ValueError(f"period_ms must be at least 0.001, got {self.period_ms}")
        labels = [f.label for f in self.features]
        dups = sorted({x for x in labels if labels.count(x) > 1})
        if dups:
            raise ValueError(f"feature names must be unique, repeated: {dups}; set 'name'")
        if self.on_missing == "default" and self.default is None:
            raise ValueError("on_missing 'default' needs 'default': one value or one per feature")
        if isinstance(self.default, list) and len(self.default) != len(self.features):
            raise ValueError(
                f"default has {len(self.default)} values but there are "
                f"{len(self.features)} features"
            )
        values = self.default if isinstance(self.default, list) else [self.default or 0.0]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("default values must be finite numbers")
        return self

    @property
    def period_ns(self) -> int:
        return round(self.period_ms * NS_PER_MS)

    @property
    def max_delay_ns(self) -> int:
        return round(self.max_delay_ms * NS_PER_MS)

    @property
    def sources(self) -> list[str]:
        """Source ids whose raw topics the flow reads, in first-use order."""
        return list(dict.fromkeys(f.source for f in self.features))

    @property
    def labels(self) -> list[str]:
        return [f.label for f in self.features]

    def defaults(self) -> list[float]:
        """The default value of each feature (0.0 where none is set)."""
        if isinstance(self.default, list):
            return list(self.default)
        return [self.default or 0.0] * len(self.features)


class FlowAlign(BaseModel):
    """What the aligner reads of a flow: its name and its `align` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: FlowName = Field(description="the flow id: topics samples/{name}, results/{name}")
    align: AlignSpec


# The keys of a flow file the aligner reads; the others belong to other services.
FLOW_KEYS = tuple(FlowAlign.model_fields)


def read_flow_file(path: Path) -> FlowAlign:
    """The name and `align` section of a flow file; errors name the file, the line and the key.
    The other keys (model, actions, sinks) are not read here: `edgefleet check` validates them."""
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return validate(FlowAlign, {k: data[k] for k in FLOW_KEYS if k in data}, str(path), lines)


class AlignerConfig(SessionConfig):
    """The flow's name and align section inline (`flow: {name, align}`, as `edgefleet up`
    writes it) or a flow file by path (`flow_file:`, relative to the config file's folder like
    every path in a config; only its `name` and `align` keys are read)."""

    flow: FlowAlign | None = None
    flow_file: Path | None = None
    publish_qos: int = Field(1, ge=0, le=1)
    subscribe_qos: int = Field(1, ge=0, le=1)
    # Readings stamped further ahead of the local clock are dropped, counted and reported per
    # source, so a source whose clock runs far ahead cannot fill the memory.
    max_ahead_ms: float = Field(60_000.0, gt=0)
    # Take the adapters' "complete up to t" (a batch's `complete`) as progress of every signal
    # of the batch; false for a source whose timestamps are not on the clock it reports by.
    use_complete: bool = True

    @model_validator(mode="after")
    def _one_flow(self) -> AlignerConfig:
        if (self.flow is None) == (self.flow_file is None):
            raise ValueError("give exactly one of 'flow' (inline) or 'flow_file' (a path)")
        return self

    def flow_spec(self) -> FlowAlign:
        """The flow's name and align spec; a flow file is read and validated here
        (`ConfigError` names file, line and key)."""
        if self.flow is not None:
            return self.flow
        assert self.flow_file is not None  # the validator saw to it
        path = self.flow_file if self.flow_file.is_absolute() else self.source_dir / self.flow_file
        return read_flow_file(path)
