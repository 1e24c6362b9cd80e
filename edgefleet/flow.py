"""The flow file: one use case's pipeline, composed from the services' own specs
(docs/architecture.md).

`name` and `align` are the aligner's (`FlowAlign`, explained key by key in docs/aligner.md);
`model`, `actions` and `sinks` take the keys of the services that own them, from their own
models, so a flow and an instance config can never disagree: `model` is the inference settings
(`ModelSpec` plus `outputs`, `max_batch`, ...; the features and the window come from `align`),
each action is the actuator's `ActionSpec`, each sink the forwarder's `Sink`. Unknown keys are
refused everywhere, so a typo fails at load time instead of silently doing nothing. `load_flow`
makes relative paths start at the flow file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from services.actuator.config import ActionSpec
from services.aligner.config import AlignerConfig, FlowAlign
from services.forwarder.config import FileSink, HttpSink, MqttSink, SparkplugSink, SqliteSink
from services.inference.config import InferenceSettings, ModelSpec
from shared.config import ServiceConfig, read_yaml, resolve_paths, validate

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


if TYPE_CHECKING:
    AlignerSettings = BaseModel
else:
    AlignerSettings = create_model(
        "AlignerSettings",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Settings of a flow's aligner instance beside its `align` section: "
        "`max_ahead_ms` (readings stamped further ahead of the local clock are dropped and "
        "reported per source), `use_complete` (take the adapters' 'complete up to t'), the QoS.",
        **{
            name: (field.annotation, field)
            for name, field in AlignerConfig.model_fields.items()
            if name not in {*ServiceConfig.model_fields, "flow", "flow_file"}
        },
    )


def _sink_name(data: Any) -> Any:
    """A sink's name defaults to its kind (names must be unique within the site's forwarder)."""
    if isinstance(data, dict) and "name" not in data and isinstance(data.get("kind"), str):
        return {**data, "name": data["kind"]}
    return data


def _name_optional(schema: dict[str, Any]) -> None:
    """The JSON Schema says what the loader does: a flow's sink may leave out its name."""
    required = schema.get("required", [])
    if "name" in required:
        required.remove("name")
    name = schema.get("properties", {}).get("name")
    if isinstance(name, dict):
        name["description"] = "unique in the site's forwarder; default: the sink's kind"


class _Named:
    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        return _sink_name(data)


NAMED = ConfigDict(json_schema_extra=_name_optional)


class FlowMqttSink(_Named, MqttSink):
    model_config = NAMED


class FlowHttpSink(_Named, HttpSink):
    model_config = NAMED


class FlowSqliteSink(_Named, SqliteSink):
    model_config = NAMED


class FlowFileSink(_Named, FileSink):
    model_config = NAMED


class FlowSparkplugSink(_Named, SparkplugSink):
    model_config = NAMED


FlowSink = Annotated[
    FlowMqttSink | FlowHttpSink | FlowSqliteSink | FlowFileSink | FlowSparkplugSink,
    Field(discriminator="kind"),
]


class FlowSpec(FlowAlign):
    """A flow file: its name, how samples are aligned, the model, the actions and the sinks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = None
    model: FlowModel | None = Field(
        default=None, description="the model to run; without it the flow only aligns"
    )
    actions: list[ActionSpec] = Field(
        default_factory=list, description="writes back to machines (docs/actuator.md)"
    )
    sinks: list[FlowSink] = Field(
        default_factory=list, description="where results go (docs/forwarder.md)"
    )
    aligner: AlignerSettings | None = Field(
        default=None,
        description="this flow's aligner instance: over site.yaml's `aligner` (docs/aligner.md)",
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
    resolve_paths(flow, p.resolve().parent)
    return flow
