"""The flow file: one use case's pipeline (DESIGN.md, "Flow definition").

`align` is explained key by key in docs/aligner.md. `model`, `actions` and `sinks` take the keys
of the services that own them, from their own models, so a flow and an instance config can never
disagree: `model` is the inference settings (`ModelSpec` plus `outputs`, `max_batch`, ...; the
features and the window come from `align`), each action is the actuator's `ActionSpec`, each sink
the forwarder's `Sink`. Unknown keys are refused everywhere, so a typo fails at load time instead
of silently doing nothing. `load_flow` makes relative paths start at the flow file's folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from services.actuator.config import ActionSpec
from services.forwarder.config import FileSink, HttpSink, MqttSink, SqliteSink
from services.inference.settings import InferenceSettings, ModelSpec
from shared.config import _resolve_paths, read_yaml, topic_id, validate

Fill = Literal["hold", "linear", "nearest"]
Agg = Literal["mean", "min", "max", "rms", "last", "count", "std"]
OnMissing = Literal["skip", "nan", "default"]

NS_PER_MS = 1_000_000


FlowName = Annotated[str, AfterValidator(lambda v: topic_id(v, "flow name"))]


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


# Inference settings a flow does not write under `model`: they come from the flow itself.
FROM_FLOW = ("flow", "model", "features", "window")

if TYPE_CHECKING:
    FlowModel = ModelSpec
else:
    FlowModel = create_model(
        "FlowModel",
        __base__=ModelSpec,
        __doc__="The model and how inference serves it: `path` (relative to the flow file) or "
        "`ref` (`name@version` from the library), plus the inference settings.",
        **{
            name: (field.annotation, field)
            for name, field in InferenceSettings.model_fields.items()
            if name not in FROM_FLOW
        },
    )


def _sink_name(data: Any) -> Any:
    """A sink's name defaults to its kind (names must be unique within the site's forwarder)."""
    if isinstance(data, dict) and "name" not in data and isinstance(data.get("kind"), str):
        return {**data, "name": data["kind"]}
    return data


class _Named:
    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        return _sink_name(data)


class FlowMqttSink(_Named, MqttSink):
    pass


class FlowHttpSink(_Named, HttpSink):
    pass


class FlowSqliteSink(_Named, SqliteSink):
    pass


class FlowFileSink(_Named, FileSink):
    pass


FlowSink = Annotated[
    FlowMqttSink | FlowHttpSink | FlowSqliteSink | FlowFileSink, Field(discriminator="kind")
]


class FlowSpec(BaseModel):
    """A flow file: its name, how samples are aligned, the model, the actions and the sinks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: FlowName = Field(description="the flow id: topics samples/{name}, results/{name}")
    description: str | None = None
    align: AlignSpec
    model: FlowModel | None = Field(
        default=None, description="the model to run; without it the flow only aligns"
    )
    actions: list[ActionSpec] = Field(
        default_factory=list, description="writes back to machines (docs/actuator.md)"
    )
    sinks: list[FlowSink] = Field(
        default_factory=list, description="where results go (docs/forwarder.md)"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> FlowSpec:
        for what, names in (
            ("action", [a.name for a in self.actions if a.name is not None]),
            ("sink", [s.name for s in self.sinks]),
        ):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} names must be unique in a flow: {dup}")
        return self

    def inference_settings(self) -> dict[str, Any]:
        """The inference keys of this flow (`InferenceSettings`), as a plain dict."""
        if self.model is None:
            return {}
        data = self.model.model_dump(mode="json", exclude_unset=True)
        spec = {k: data.pop(k) for k in ModelSpec.model_fields if k in data}
        return {
            "flow": self.name,
            "model": spec,
            "features": self.align.labels,
            "window": self.align.window,
            **data,
        }


def parse_flow(data: Any, origin: str = "<flow>") -> FlowSpec:
    """Validate a flow from parsed YAML/JSON; `ConfigError` names `origin` and each key."""
    return validate(FlowSpec, data, origin)


def load_flow(path: str | Path) -> FlowSpec:
    """Read and validate a flow YAML file; errors name the file, the line and the key.

    Relative paths in it (model, scripts, sink files) are made to start at the file's folder."""
    p = Path(path)
    data, lines = read_yaml(p)
    flow = validate(FlowSpec, data, str(p), lines)
    _resolve_paths(flow, p.resolve().parent)
    return flow
