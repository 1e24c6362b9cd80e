"""The flow file: one use case's pipeline (DESIGN.md, "Flow definition").

`AlignSpec` is complete (docs/aligner.md explains every key); `model`, `actions` and `sinks`
are typed loosely until the services that own them settle their keys. Unknown keys are refused
everywhere, so a typo fails at load time instead of silently doing nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.config import read_yaml, validate
from shared.errors import TopicError
from shared.topics import validate_id

Fill = Literal["hold", "linear", "nearest"]
Agg = Literal["mean", "min", "max", "rms", "last", "count", "std"]
OnMissing = Literal["skip", "nan", "default"]

NS_PER_MS = 1_000_000


class FeatureSpec(BaseModel):
    """One model input: a signal either filled at the sample time or aggregated over the period."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signal: str = Field(description="'source/signal': the raw topic's source id, then the name")
    fill: Fill | None = None
    agg: Agg | None = None
    max_age_ms: float | None = Field(default=None, gt=0)
    name: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_rule(self) -> FeatureSpec:
        source, sep, name = self.signal.partition("/")
        if not sep or not name:
            raise ValueError(f"signal must be 'source/signal', got {self.signal!r}")
        try:
            validate_id(source, "source")
        except TopicError as exc:
            raise ValueError(str(exc)) from None
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

    period_ms: float = Field(gt=0, description="grid step: samples at k × period on the epoch")
    max_delay_ms: float = Field(ge=0, description="lateness allowance after each sample time")
    window: int = Field(default=1, ge=1, description="W samples per model input")
    stride: int = Field(default=1, ge=1, description="one window every `stride` samples")
    on_missing: OnMissing = "skip"
    default: float | list[float] | None = None
    early_emit: bool = True
    accept_uncertain: bool = Field(
        default=True, description="use readings of uncertain quality (bad ones never are)"
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


class FlowSpec(BaseModel):
    """A flow file. Only `align` is typed in full so far."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str | None = None
    align: AlignSpec
    model: dict[str, Any] | None = None
    actions: list[dict[str, Any]] = Field(default_factory=list)
    sinks: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _name_is_id(self) -> FlowSpec:
        try:
            validate_id(self.name, "flow name")
        except TopicError as exc:
            raise ValueError(str(exc)) from None
        return self


def parse_flow(data: Any, origin: str = "<flow>") -> FlowSpec:
    """Validate a flow from parsed YAML/JSON; `ConfigError` names `origin` and each key."""
    return validate(FlowSpec, data, origin)


def load_flow(path: str | Path) -> FlowSpec:
    """Read and validate a flow YAML file; errors name the file, the line and the key."""
    p = Path(path)
    data, lines = read_yaml(p)
    return validate(FlowSpec, data, str(p), lines)
