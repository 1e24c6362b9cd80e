"""`site.yaml`: the site, its broker, its sources (one adapter instance each) and its flows.

The kind-specific keys of a source are the adapter's own config keys, not a copy of them: a
source is checked by building the adapter's instance config (`derive.py`) and every error is
mapped back to the source's line in site.yaml. The JSON Schema (`edgefleet schema`) shows them
per kind all the same, from models built out of the adapters' config models (`source_models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from edgefleet.flow import AlignerSettings
from edgefleet.registry import service_spec
from services.actuator.config import ActuatorConfig
from services.forwarder.config import ForwarderConfig
from shared.config import BrokerConfig, ServiceConfig, StrictModel, Timings, TopicId
from shared.errors import ConfigError
from shared.metrics import MetricsSettings
from shared.signing import PublicKey
from shared.topics import DEFAULT_PREFIX

SourceKind = Literal["modbus", "opcua", "mqtt"]

# Source kind -> (service name, instance name prefix).
ADAPTERS: dict[str, tuple[str, str]] = {
    "modbus": ("modbus", "modbus"),
    "opcua": ("opcua", "opcua"),
    "mqtt": ("mqtt-ingest", "ingest"),
}

# Keys of a service config the site writes itself: a source or a section may not set them.
SITE_KEYS = frozenset(ServiceConfig.model_fields)
SOURCE_SET = frozenset({"source"})  # the adapter's `source` is the source's `name`


def service_config_model(service: str) -> type[ServiceConfig] | None:
    """A service's config model (its `SPEC.config`), or None when that service is not part of
    this build."""
    try:
        config: type[ServiceConfig] = service_spec(service).config
    except (ConfigError, ImportError):
        return None
    return config


def own_fields(model: type[BaseModel], exclude: frozenset[str]) -> dict[str, Any]:
    """A model's fields except `exclude`, ready for `create_model`."""
    return {
        name: (field.annotation, field)
        for name, field in model.model_fields.items()
        if name not in exclude
    }


class SiteBroker(BrokerConfig):
    """The site broker every instance connects to."""

    start_local: bool = Field(
        False, description="`edgefleet up` starts a local mosquitto on host:port and stops it"
    )


ActuatorSwitch: type[BaseModel] = create_model(
    "ActuatorSwitch",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Settings of every flow's actuator: `enabled: false` (the default) makes every "
    "decision an event only; `dry_run: true` reports what would be written.",
    **own_fields(
        ActuatorConfig,
        SITE_KEYS | {"flow", "actions", "inference_instance", "model_sha256"},
    ),
)

ForwarderSettings: type[BaseModel] = create_model(
    "ForwarderSettings",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Settings of the site's forwarder; its sinks come from the flows. A relative "
    "queue_dir starts at site.yaml's folder.",
    **own_fields(ForwarderConfig, SITE_KEYS | {"flows", "sinks"}),
)


if TYPE_CHECKING:  # the static view of the two generated models
    ActuatorSection = BaseModel
    ForwarderSection = BaseModel
else:
    ActuatorSection = ActuatorSwitch
    ForwarderSection = ForwarderSettings


class SupervisorSettings(StrictModel):
    """How `edgefleet up` restarts an instance that dies and stops the site."""

    restart_initial_s: float = Field(0.5, gt=0, description="first restart delay")
    restart_max_s: float = Field(
        30.0, gt=0, description="restart delay cap (doubling; each wait drawn from [d/2, d])"
    )
    stable_after_s: float = Field(
        30.0, gt=0, description="an instance up this long has its restart delay reset"
    )
    stop_timeout_s: float = Field(10.0, gt=0, description="SIGTERM, then SIGKILL after this")
    forwarder_first_s: float = Field(
        30.0,
        ge=0,
        description="the forwarder starts first; the flows start once it is online (its session "
        "then holds their results) or after this long without it",
    )


class FleetBroker(StrictModel):
    """The fleet's (cloud) broker: the agent's commands go there (`library.download_url`), and
    a local site broker (`broker.start_local`) bridges `desired`, `status` and `reported` to it."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)


class DebugLimits(StrictModel):
    """What this node lets a debug session of the fleet do (docs/debug.md); the fleet has its
    own limits too, and a request beyond these is refused (sessions) or cut down (rate, time)."""

    max_sessions: int = Field(4, ge=0, description="debug sessions open at once; 0: none")
    max_seconds: float = Field(3600.0, gt=0, description="longest a session stays open")
    max_rate_hz: float = Field(10.0, gt=0, description="messages per second per topic, at most")
    max_topics: int = Field(
        64, ge=1, description="distinct topics one session forwards; more are dropped, counted"
    )


class FleetSection(StrictModel):
    """The node's agent (docs/agent.md): `edgefleet up` runs it when site.yaml has this section."""

    trusted_keys: list[str] = Field(
        min_length=1,
        description="public keys (`ed25519:...`) whose signed desired states this node runs",
    )
    broker: FleetBroker | None = Field(
        None,
        description="the fleet's broker (commands; the local broker's bridge); default: the "
        "site broker",
    )
    cache_max_mb: float = Field(1024.0, gt=0, description="blob cache size before eviction")
    health_timeout_s: float = Field(
        60.0, gt=0, description="a deployed flow must be online with results within this"
    )
    inspect_timeout_s: float = Field(
        30.0, gt=0, description="loading and one trial run of a model, in a separate process"
    )
    command_timeout_s: float = Field(30.0, gt=0, description="for an answer of the fleet")
    debug: DebugLimits = Field(
        default_factory=lambda: DebugLimits.model_validate({}),
        description="limits of the fleet's debug sessions on this node",
    )

    @field_validator("trusted_keys")
    @classmethod
    def _keys_parse(cls, keys: list[str]) -> list[str]:
        for key in keys:
            try:
                PublicKey.parse(key)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return keys


class SourceSpec(BaseModel):
    """One device, one adapter instance: `name`, `kind`, then the adapter's own keys."""

    model_config = ConfigDict(extra="allow")

    name: TopicId = Field(description="the source id: raw/{name}; flows read `{name}/{signal}`")
    kind: SourceKind
    log_level: str | None = None

    @property
    def adapter_keys(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def instance(self) -> str:
        return f"{ADAPTERS[self.kind][1]}-{self.name}"


class SiteSpec(StrictModel):
    """A site.yaml file."""

    site: TopicId = Field(description="the site id: topics ef/{site}/...")
    prefix: TopicId = DEFAULT_PREFIX
    broker: SiteBroker = Field(default_factory=lambda: SiteBroker.model_validate({}))
    timings: Timings = Field(default_factory=lambda: Timings.model_validate({}))
    log_level: str = "INFO"
    sources: list[SourceSpec] = Field(default_factory=list)
    flows: list[Path] = Field(
        default_factory=list, description="flow files, relative to site.yaml's folder"
    )
    aligner: AlignerSettings = Field(
        default_factory=lambda: AlignerSettings.model_validate({}),
        description="settings of every flow's aligner; a flow's own `aligner` wins",
    )
    actuator: ActuatorSection = Field(default_factory=lambda: ActuatorSwitch.model_validate({}))
    forwarder: ForwarderSection = Field(
        default_factory=lambda: ForwarderSettings.model_validate({})
    )
    supervisor: SupervisorSettings = Field(
        default_factory=lambda: SupervisorSettings.model_validate({})
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="the node's labels, for the fleet's groups"
    )
    fleet: FleetSection | None = Field(
        None, description="run the agent: this node takes desired states from a fleet"
    )
    metrics: MetricsSettings | None = Field(
        None,
        description="serve Prometheus /metrics from `edgefleet up` (docs/metrics.md); "
        "absent: not served",
    )


def source_models() -> dict[str, type[BaseModel]]:
    """Per kind, a model of a source's keys built from the adapter's config model (for the
    JSON Schema); kinds whose adapter is not in this build are left out."""
    out: dict[str, type[BaseModel]] = {}
    for kind, (service, _) in ADAPTERS.items():
        config = service_config_model(service)
        if config is None:
            continue
        out[kind] = create_model(
            f"{kind.capitalize()}Source",
            __config__=ConfigDict(extra="forbid"),
            __doc__=f"A {kind} source: the {service} adapter's keys.",
            name=(TopicId, Field(description="the source id")),
            kind=(Literal[kind], ...),  # type: ignore[arg-type]
            log_level=(str | None, None),
            **own_fields(config, SITE_KEYS | SOURCE_SET),
        )
    return out
