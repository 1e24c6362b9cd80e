"""Every message schema of the wire contract (docs/wire-contract.md), each with a version field.

Hot-path messages (readings, samples, results) are column-wise numpy arrays checked cheaply by
hand; control-plane messages are pydantic models. `to_wire`/`from_wire` convert to and from the
plain dicts that `shared.codec` encodes, so one decoder reads msgpack and JSON alike.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.clock import iso as iso  # re-exported: time lives in shared.clock
from shared.clock import now_ns as now_ns
from shared.codec import Encoding
from shared.errors import PayloadError

SCHEMA_VERSION = 1

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]


class Quality(IntEnum):
    """Quality of one reading, as the device or adapter judged it."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


class FeatureState(IntEnum):
    """How the aligner decided one feature of one sample."""

    OBSERVED = 0  # a reading at the sample time, or an aggregate over readings in the period
    HELD = 1  # the last good value before the sample time (hold / nearest)
    INTERPOLATED = 2  # linear between the two good readings around the sample time
    MISSING = 3  # nothing usable within max_age: the value is NaN
    DEFAULT = 4  # missing, filled with the flow's default value


def _check_version(d: dict[str, Any], kind: str) -> None:
    if not isinstance(d, dict):
        raise PayloadError(f"expected a {kind} message (a map), got {type(d).__name__}")
    # type checks first: an array compared with `!=` is an array, not a bool
    got = d.get("kind")
    if not isinstance(got, str) or got != kind:
        raise PayloadError(f"expected kind {kind!r}, got {got!r}")
    v = d.get("v")
    if type(v) is not int or v != SCHEMA_VERSION:
        raise PayloadError(f"unsupported {kind} schema version {d.get('v')!r}")


def _array(d: dict[str, Any], key: str, dtype: type[np.generic], ndim: int | None = 1) -> Any:
    if key not in d:
        raise PayloadError(f"missing field {key!r}")
    value = d[key]
    try:
        if np.dtype(dtype).kind in "iu" and not (
            isinstance(value, np.ndarray) and value.dtype.kind in "iu"
        ):
            # a float cast to an integer column would wrap or truncate silently
            raw = np.asarray(value)
            if raw.size and raw.dtype.kind not in "iub":  # an empty list reads as float
                raise TypeError("its values are not integers")
        arr = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise PayloadError(f"field {key!r} is not an array of {np.dtype(dtype)}: {exc}") from None
    if ndim is not None and arr.ndim != ndim:
        raise PayloadError(f"field {key!r} must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


def _str_list(d: dict[str, Any], key: str) -> list[str]:
    value = d.get(key)
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise PayloadError(f"field {key!r} must be a list of strings")
    return value


def _str(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"field {key!r} must be a non-empty string")
    return value


@dataclass
class ReadingBatch:
    """Readings of one source, column-wise: reading i is signal `signals[sig[i]]` at `t[i]`.

    `t` is integer nanoseconds since the Unix epoch (the device's clock where the protocol gives
    one), `value` float64, `q` a `Quality`. The full signal name a flow uses is `source/signal`.
    `complete_ns`, when an adapter knows it: no reading of any of `signals` stamped at or before
    it will follow this batch (a poll or a subscription publish covers them all), so a signal
    that did not change is known unchanged up to then.
    """

    KIND: ClassVar[str] = "readings"
    source: str
    signals: list[str]
    t: I64
    sig: U16
    value: F64
    q: U8
    received_ns: int | None = None  # local clock when the adapter got it, for clock skew
    complete_ns: int | None = None  # every reading of `signals` up to this time has been sent

    @classmethod
    def from_columns(
        cls,
        source: str,
        signals: list[str],
        t: Any,
        sig: Any,
        value: Any,
        q: Any = None,
        received_ns: int | None = None,
        complete_ns: int | None = None,
    ) -> ReadingBatch:
        value_arr = np.asarray(value, dtype=np.float64)
        q_arr = np.zeros(value_arr.shape, np.uint8) if q is None else np.asarray(q, dtype=np.uint8)
        batch = cls(
            source,
            list(signals),
            np.asarray(t, dtype=np.int64),
            np.asarray(sig, dtype=np.uint16),
            value_arr,
            q_arr,
            received_ns,
            complete_ns,
        )
        batch.check()
        return batch

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def check(self) -> None:
        n = self.t.shape[0]
        for name in ("sig", "value", "q"):
            if getattr(self, name).shape != (n,):
                raise PayloadError(
                    f"readings from {self.source!r}: column {name!r} has shape "
                    f"{getattr(self, name).shape}, expected ({n},) like 't'"
                )
        if n and int(self.sig.max()) >= len(self.signals):
            raise PayloadError(
                f"readings from {self.source!r}: signal index {int(self.sig.max())} "
                f"but only {len(self.signals)} signals named"
            )
        if n and int(self.q.max()) > Quality.BAD:
            raise PayloadError(f"readings from {self.source!r}: quality above {Quality.BAD.value}")

    def to_wire(self, encoding: Encoding = Encoding.MSGPACK) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "kind": self.KIND,
            "source": self.source,
            "signals": self.signals,
            "t": self.t,
            "sig": self.sig,
            "value": self.value,
            "q": self.q,
        }
        if self.received_ns is not None:
            d["received"] = self.received_ns
        if self.complete_ns is not None:
            d["complete"] = self.complete_ns
        if encoding is Encoding.JSON:
            d["time"] = [iso(int(x)) for x in self.t]
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ReadingBatch:
        _check_version(d, cls.KIND)
        received = d.get("received")
        complete = d.get("complete")
        if complete is not None and (not isinstance(complete, int) or isinstance(complete, bool)):
            raise PayloadError(f"field 'complete' must be integer ns, got {complete!r}")
        batch = cls(
            _str(d, "source"),
            _str_list(d, "signals"),
            _array(d, "t", np.int64),
            _array(d, "sig", np.uint16),
            _array(d, "value", np.float64),
            _array(d, "q", np.uint8),
            int(received) if isinstance(received, int) else None,
            complete,
        )
        batch.check()
        return batch


@dataclass
class SampleBatch:
    """Aligned samples of one flow: `x[i]` is the model input at time `t[i]`.

    `x` is float32 [N, F] (or [N, W, F] for windows of W samples); `state` (a `FeatureState`)
    and `age_ms` (age of the value used, NaN when missing) have the shape of `x`.
    """

    KIND: ClassVar[str] = "samples"
    flow: str
    features: list[str]
    t: I64
    x: F32
    state: U8
    age_ms: F32

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def check(self) -> None:
        n, f = self.t.shape[0], len(self.features)
        if self.x.ndim not in (2, 3) or self.x.shape[0] != n or self.x.shape[-1] != f:
            raise PayloadError(
                f"samples of {self.flow!r}: x has shape {self.x.shape}, expected "
                f"({n}, {f}) or ({n}, W, {f})"
            )
        for name in ("state", "age_ms"):
            if getattr(self, name).shape != self.x.shape:
                raise PayloadError(
                    f"samples of {self.flow!r}: {name!r} has shape "
                    f"{getattr(self, name).shape}, expected {self.x.shape} like 'x'"
                )

    def to_wire(self, encoding: Encoding = Encoding.MSGPACK) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "kind": self.KIND,
            "flow": self.flow,
            "features": self.features,
            "t": self.t,
            "x": self.x,
            "state": self.state,
            "age_ms": self.age_ms,
        }
        if encoding is Encoding.JSON:
            d["time"] = [iso(int(x)) for x in self.t]
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> SampleBatch:
        _check_version(d, cls.KIND)
        batch = cls(
            _str(d, "flow"),
            _str_list(d, "features"),
            _array(d, "t", np.int64),
            _array(d, "x", np.float32, None),
            _array(d, "state", np.uint8, None),
            _array(d, "age_ms", np.float32, None),
        )
        batch.check()
        return batch


def _output(value: Any) -> Any:
    """An output column as an array; JSON's nulls become NaN in numeric columns."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise PayloadError(f"an output column is not an array: {str(exc)[:80]}") from None
    if arr.dtype == object:
        try:
            return np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            return arr  # labels stay strings
    return arr


def result_id(flow: str, t_ns: int) -> str:
    """The id every receiver drops duplicates by."""
    return f"{flow}:{t_ns}"


@dataclass
class ModelRef:
    name: str
    version: str
    sha256: str

    def to_wire(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass
class ResultBatch:
    """Model outputs for samples of one flow: `outputs[name][i]` belongs to sample time `t[i]`."""

    KIND: ClassVar[str] = "results"
    flow: str
    model: ModelRef
    t: I64
    outputs: dict[str, Any]
    latency_us: F32

    @cached_property
    def ids(self) -> list[str]:
        """Each row's `result_id`, derived from flow and time when first asked for."""
        return [f"{self.flow}:{x}" for x in self.t.tolist()]  # plain ints: faster than numpy's

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def check(self) -> None:
        n = self.t.shape[0]
        for name, arr in self.outputs.items():
            if np.shape(arr)[:1] != (n,):
                raise PayloadError(
                    f"results of {self.flow!r}: output {name!r} has shape {np.shape(arr)}, "
                    f"expected {n} rows"
                )
        if self.latency_us.shape != (n,):
            raise PayloadError(f"results of {self.flow!r}: latency_us does not have {n} rows")

    def to_wire(self, encoding: Encoding = Encoding.MSGPACK) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "kind": self.KIND,
            "flow": self.flow,
            "model": self.model.to_wire(),
            "t": self.t,
            "outputs": self.outputs,
            "latency_us": self.latency_us,
        }
        if encoding is Encoding.JSON:  # for readers that do not derive the id
            d["id"] = self.ids
            d["time"] = [iso(int(x)) for x in self.t]
        return d

    @classmethod
    def rows(cls, d: dict[str, Any]) -> int:
        """The number of results in a decoded message, with its shapes checked but nothing
        built: for a relay (the forwarder) that passes the payload on as it came."""
        _check_version(d, cls.KIND)
        n = int(_array(d, "t", np.int64).shape[0])
        outputs = d.get("outputs")
        if not isinstance(outputs, dict):
            raise PayloadError("field 'outputs' must be a map of output name to array")
        for name, column in (*outputs.items(), ("latency_us", d.get("latency_us"))):
            if np.shape(column)[:1] != (n,):
                raise PayloadError(f"results: {name!r} does not have {n} rows like 't'")
        return n

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ResultBatch:
        _check_version(d, cls.KIND)
        model = d.get("model")
        if not isinstance(model, dict):
            raise PayloadError("field 'model' must be a map of name, version, sha256")
        outputs = d.get("outputs")
        if not isinstance(outputs, dict):
            raise PayloadError("field 'outputs' must be a map of output name to array")
        batch = cls(
            _str(d, "flow"),
            ModelRef(str(model.get("name")), str(model.get("version")), str(model.get("sha256"))),
            _array(d, "t", np.int64),
            {str(k): _output(v) for k, v in outputs.items()},
            _array(d, "latency_us", np.float32),
        )  # an `id` column is ignored: the ids are derived from flow and t
        batch.check()
        return batch


# ---------------------------------------------------------------- control plane (pydantic)


class Message(BaseModel):
    """Base of control-plane messages: unknown keys refused, version checked."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1

    @classmethod
    def from_wire(cls, d: Any) -> Any:
        try:
            return cls.model_validate(d)
        except ValidationError as exc:
            raise PayloadError(f"invalid {cls.__name__}: {_first_error(exc)}") from None

    def to_wire(self, encoding: Encoding = Encoding.MSGPACK) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(message)"
    what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return f"{where}: {what}"


class Status(Message):
    """Retained on `status/{instance}`: online with health, stopped when it exits cleanly,
    offline as the last will."""

    kind: Literal["status"] = "status"
    instance: str
    service: str
    state: Literal["online", "stopped", "offline"]
    t: int = Field(default_factory=now_ns)
    since: int | None = None  # when this run started
    health: dict[str, Any] = Field(default_factory=dict)


class ErrorReport(Message):
    """On `errors/{instance}`: an input that was rejected, and why."""

    kind: Literal["error"] = "error"
    instance: str
    t: int = Field(default_factory=now_ns)
    topic: str | None = None
    reason: str
    excerpt: str | None = None  # the start of the payload, for a person to look at
    count: int = 1  # rejections of this kind since the last report (reports are rate-limited)


class ConfigUpdate(Message):
    """Retained on `config/{instance}`: a revision newer than the running one is applied."""

    kind: Literal["config"] = "config"
    instance: str
    revision: int
    config: dict[str, Any]


class _Target(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PointTarget(_Target):
    """Modbus: a point of the adapter's config marked `writable`."""

    point: str


class RegisterTarget(_Target):
    """Modbus: one coil or one uint16 holding register, 0-based within its table."""

    table: str
    address: int
    unit: int | None = None  # 1 when not given


class SignalTarget(_Target):
    """OPC UA: a signal of the adapter's config marked `writable`."""

    signal: str


class NodeTarget(_Target):
    """OPC UA: the node id of a signal marked `writable` (`ns=2;s=...`)."""

    node: str


# What a write names, in the adapter's own terms; each adapter takes its two kinds.
WriteTarget = PointTarget | RegisterTarget | SignalTarget | NodeTarget


class WriteRequest(Message):
    """On `cmd/{source}` with a response topic and correlation data: write one point."""

    kind: Literal["write"] = "write"
    request_id: str
    target: WriteTarget  # Modbus {point} or {table, address, unit}; OPC UA {signal} or {node}
    value: float | int | bool
    t: int = Field(default_factory=now_ns)


class WriteResponse(Message):
    """The adapter's answer, sent to the request's response topic."""

    kind: Literal["write_result"] = "write_result"
    request_id: str
    ok: bool
    readback: float | int | bool | None = None
    error: str | None = None
    t: int = Field(default_factory=now_ns)


class Event(Message):
    """On `events/{flow}`: one decision of the actuator, the audit trail."""

    kind: Literal["event"] = "event"
    flow: str
    action: str
    decision: Literal["acted", "suppressed", "failed", "dry_run", "safe_state", "hold", "release"]
    reason: str
    result_id: str | None = None
    write: dict[str, Any] | None = None
    t: int = Field(default_factory=now_ns)


class ActuatorCommand(Message):
    """On `cmd/{actuator instance}` with a response topic: hold one action's output (at `value`,
    or as it is) and suspend its rule, or release it. Answered with a `write_result`. `by` and
    `reason` are kept with the hold (it survives restarts) and shown in the status."""

    kind: Literal["actuator_command"] = "actuator_command"
    request_id: str
    op: Literal["hold", "release"]
    action: str
    value: float | int | bool | None = None
    by: str | None = None  # who asked (a person's user name); "unknown" when not given
    reason: str | None = None
    t: int = Field(default_factory=now_ns)


class _Part(BaseModel):
    """A part of a control-plane message: unknown keys refused, no version of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


SHA256 = Field(pattern=r"^[0-9a-f]{64}$")


class PinnedResource(_Part):
    """A library resource a flow version uses, pinned to its version and content."""

    kind: Literal["model", "script"]
    ref: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*@[0-9]+$")  # name@N
    sha256: str = SHA256
    size: int = Field(ge=0)


class DeployedFlow(_Part):
    """One flow version a node runs: the flow file as pushed (every reference pinned) and the
    blobs it needs; `shadow`, a library model run beside the live one on the same samples,
    acting on nothing (it wins over a `model.shadow` the flow text may name)."""

    name: str
    version: int = Field(ge=1)
    flow: str = ""  # the flow file text of this version
    resources: list[PinnedResource] = Field(default_factory=list)
    shadow: PinnedResource | None = None

    @property
    def blobs(self) -> list[PinnedResource]:
        """Every blob the node needs for this flow: its resources and the shadow model."""
        return [*self.resources, *([self.shadow] if self.shadow else [])]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Signature(_Part):
    alg: Literal["ed25519"]
    key_id: str
    sig: str


class DesiredState(Message):
    """Retained on `{site}/desired`, written by the fleet service: everything the node should
    run. `revision` only grows per site; `signature` (shared/signing.py) covers every other
    member, and the agent refuses what is unsigned, signed by an untrusted key, or older than
    what it took in already."""

    kind: Literal["desired"] = "desired"
    site: str
    revision: int = Field(ge=1)
    deployment: str | None = None
    flows: list[DeployedFlow] = Field(default_factory=list)
    # A key rotation (`edgefleet keys rotate`): the public keys the node trusts from now on,
    # replacing site.yaml's; signed like the rest by a key it trusts now. None: unchanged.
    trusted_keys: list[str] | None = Field(default=None, min_length=1)
    issued: int = Field(default_factory=now_ns)
    signature: Signature | None = None


# rollback_failed: the revision failed its health gate and the one before could not run again
# (its files removed or changed on disk); the node runs none of the deployed flows
ReportedStep = Literal[
    "received", "downloading", "verifying", "activating", "applied", "failed", "rolled_back",
    "rollback_failed",
]  # fmt: skip


class FlowReport(_Part):
    name: str
    version: int
    state: Literal["running", "starting", "failed", "stopped"]
    model_sha256: str | None = None
    error: str | None = None


class ReportedState(Message):
    """Retained on `{site}/reported`, written by the site's agent at every step of applying a
    desired state: which revision, how far, the last good revision it would go back to, the
    error, and how long each step took (ms)."""

    kind: Literal["reported"] = "reported"
    site: str
    revision: int = Field(ge=0)
    deployment: str | None = None
    state: ReportedStep
    flows: list[FlowReport] = Field(default_factory=list)
    last_good: int | None = None
    error: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    t: int = Field(default_factory=now_ns)


class DeploymentEvent(Message):
    """On `fleet/deployments` (not retained), from the fleet service: a staged deployment
    moved. `event`: `stage_started` (its nodes got their desired states), `stage_held` (every
    node of it ended within the abort threshold), `paused`, `resumed`, `aborted` (with the
    reason), `finished` (the last stage held; `state` succeeded or failed). `stage` counts from
    1; `counts` are the stage's nodes per state."""

    kind: Literal["deployment_event"] = "deployment_event"
    deployment: str
    event: Literal["stage_started", "stage_held", "paused", "resumed", "aborted", "finished"]
    stage: int = Field(ge=1)
    stages: int = Field(ge=1)
    state: str  # the deployment's: in_progress, paused, aborted, succeeded, failed
    counts: dict[str, int] = Field(default_factory=dict)
    reason: str | None = None
    t: int = Field(default_factory=now_ns)


class DebugSession(Message):
    """Retained on `debug/session/{session}`, written by the fleet service (bridged in): look at
    these site topics for a while, at most `rate_hz` messages per second per topic. Signed like a
    desired state (`signature` covers every other member); `expires` (ns, wall clock) ends it
    even if nobody closes it, and the retained message carries the MQTT v5 message expiry, so
    the brokers forget it then too. An empty retained message closes it."""

    kind: Literal["debug_session"] = "debug_session"
    site: str
    session: str
    topics: list[str] = Field(min_length=1)  # absolute filters of this site
    rate_hz: float = Field(gt=0)
    expires: int
    issued: int = Field(default_factory=now_ns)
    author: str = ""
    signature: Signature | None = None


DebugStep = Literal["open", "refused", "closed", "expired"]


class DebugState(Message):
    """On `debug/state/{session}`, from the agent (bridged out): the session opened (with the
    limits the agent applies), was refused (`reason`), was closed, or expired; with what was
    forwarded and dropped by decimation so far."""

    kind: Literal["debug_state"] = "debug_state"
    site: str
    session: str
    state: DebugStep
    reason: str | None = None
    topics: list[str] = Field(default_factory=list)
    rate_hz: float | None = None
    expires: int | None = None
    sent: int = 0
    dropped: int = 0
    t: int = Field(default_factory=now_ns)


class DebugData(Message):
    """On `debug/data/{session}/{kind}/{name}`, from the agent (bridged out): one message of
    `topic` as it travelled on the site broker (`payload` the original bytes, `content_type`
    the original one: decode it with the same codec), the latest of its interval; `dropped`
    counts the messages of that topic left out since the previous one, `seq` numbers the
    forwarded ones per session, `t` is when the agent received it (ns). Always msgpack, the
    payload as bytes; shown here as JSON, where the payload is base64."""

    kind: Literal["debug_data"] = "debug_data"
    session: str
    topic: str
    content_type: str | None = None
    payload: bytes
    t: int
    seq: int
    dropped: int = 0

    def to_wire(self, encoding: Encoding = Encoding.MSGPACK) -> dict[str, Any]:
        # msgpack carries the bytes as they are; JSON (the wire contract's example) as base64
        if encoding is Encoding.MSGPACK:
            return self.model_dump(exclude_none=True)
        wire = self.model_dump(mode="json", exclude_none=True)
        wire["payload"] = base64.b64encode(self.payload).decode()
        return wire


class FleetCommand(Message):
    """On `fleet/commands` (MQTT v5 request/response): one command for the fleet service.

    `cmd` names the command (`library.list`, `flow.push`, ...), `args` its arguments; the
    answer (`FleetAnswer`) goes to the response topic with the request's correlation data.
    `kind` may be omitted by senders."""

    kind: Literal["command"] = "command"
    cmd: str
    args: dict[str, Any] = Field(default_factory=dict)


class FleetErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str  # not_found, conflict, invalid, archived, in_use, digest_mismatch, ...
    message: str  # what went wrong and what to do next


class FleetAnswer(Message):
    """The fleet's answer to a `FleetCommand`: `ok` with the command's `result`, or `error`
    with a code a program can branch on and a message a person can act on."""

    kind: Literal["answer"] = "answer"
    ok: bool
    result: dict[str, Any] | None = None
    error: FleetErrorBody | None = None


HOT_PATH = {c.KIND: c for c in (ReadingBatch, SampleBatch, ResultBatch)}
CONTROL_PLANE: dict[str, type[Message]] = {
    c.model_fields["kind"].default: c
    for c in (
        Status,
        ErrorReport,
        ConfigUpdate,
        WriteRequest,
        WriteResponse,
        Event,
        ActuatorCommand,
        DesiredState,
        ReportedState,
        DeploymentEvent,
        FleetCommand,
        FleetAnswer,
        DebugSession,
        DebugState,
        DebugData,
    )
}
