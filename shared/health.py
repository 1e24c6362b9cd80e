"""The health a service reports in its retained status, as typed models.

`Status.health` travels as a plain mapping: the runtime's counters (`RuntimeHealth`) at the top
level and one section per service beside them (`"modbus": {...}`). The producer builds these
models and the consumers (actuator interlocks, the site supervisor, the agent, the console) read
through them, so a renamed key breaks a type check instead of an interlock. Sections that
another service reads live here; the others live with their service.

Readers are lenient on purpose: a newer instance may add keys, an older one may lack a section.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.messages import Status

Section = TypeVar("Section", bound="HealthModel")


class HealthModel(BaseModel):
    """Base of health sections: keys are dumped as they are named (the wire format); keys this
    build does not know are kept, so a reader of an older or newer service still parses it."""

    model_config = ConfigDict(extra="allow")

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RuntimeHealth(HealthModel):
    """The counters every service reports (shared/runtime.py), top level of `Status.health`."""

    uptime_s: float = 0.0
    received: int = 0
    published: int = 0
    rejected: int = 0
    errors: int = 0
    revision: int = 0
    reconnects: int = 0
    buffered: int = 0
    dropped: int = 0
    clock_skew_ms: dict[str, float] = {}
    pid: int | None = None
    cpu_percent: float | None = None
    cpu_seconds: float | None = None  # user + system since the process started (for Prometheus)
    rss_mb: float | None = None

    def section(self, name: str, model: type[Section]) -> Section | None:
        """The service section `name` as `model`, or None when it is missing or does not fit."""
        raw = (self.model_extra or {}).get(name)
        if not isinstance(raw, dict):
            return None
        try:
            return model.model_validate(raw)
        except ValidationError:
            return None


def health_of(status: Status) -> RuntimeHealth:
    """The typed health of a status; an empty one (all zero) when it does not fit."""
    try:
        return RuntimeHealth.model_validate(status.health)
    except ValidationError:
        return RuntimeHealth()


class HistogramHealth(HealthModel):
    """A cumulative histogram (shared/histogram.py keeps it): `counts[i]` observations at most
    `bounds[i]`, as Prometheus has them, `count` of all (the +Inf bucket) and their `sum`."""

    bounds: list[float] = []
    counts: list[int] = []
    count: int = 0
    sum: float = 0.0

    def buckets(self) -> list[tuple[str, int]]:
        """(`le`, cumulative count) pairs with the +Inf bucket last, for a Prometheus histogram."""
        pairs = [(repr(float(b)), c) for b, c in zip(self.bounds, self.counts, strict=False)]
        return [*pairs, ("+Inf", self.count)]


# ---------------------------------------------------------------- inference (read by actuator, CLI)


class ServedModel(HealthModel):
    """One model in service (live or shadow): which, since when, and what it does recently."""

    name: str | None = None
    version: str | None = None
    sha256: str | None = None
    origin: str | None = None
    spec: dict[str, Any] = {}
    since: int | None = None
    health: dict[str, Any] = {}  # window statistics (inputs, drift, outputs, run_us, rejected)


class ShadowModel(ServedModel):
    agreement: dict[str, Any] | None = None  # the comparison with the live model


class SwapHealth(HealthModel):
    done: int = 0
    refused: int = 0
    trying: str | None = None  # the candidate being tried now
    last: dict[str, Any] | None = None  # the last swap: what, when, why
    last_error: str | None = None


class InferenceHealth(HealthModel):
    """The `inference` section: the live model (its sha256 is what the actuator trusts), the
    shadow, swaps and the engine's counters."""

    revision: int = 0  # the last config revision applied or refused
    model: ServedModel = ServedModel()
    shadow: ShadowModel | None = None
    swaps: SwapHealth = SwapHealth()
    queued: int = 0
    offloaded_runs: int = 0
    samples: int = 0
    results: int = 0
    runs: int = 0
    skipped_nan: int = 0
    nan_outputs: int = 0  # samples whose result was NaN or infinite: not published
    failed_batches: int = 0
    failed_samples: int = 0
    script_errors: int = 0
    last_run_us: float = 0.0
    # since the start of this run, for Prometheus (shared/histogram.py); None from older builds
    run_seconds: HistogramHealth | None = None  # the model's run time per batch
    latency_seconds: HistogramHealth | None = None  # per sample: arrival to result published
    batch_size: HistogramHealth | None = None  # samples per model run

    @classmethod
    def of(cls, status: Status) -> InferenceHealth | None:
        return health_of(status).section("inference", cls)
