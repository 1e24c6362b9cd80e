"""Configuration of the actuator: one instance per flow, its actions and its safety envelope.

Every key is explained in docs/actuator.md. Conditions are parsed when the config is loaded, so
a bad expression stops the instance before it connects, naming the action and the expression.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from services.actuator.expr import Condition, ExprError
from shared.config import ServiceConfig, StrictModel, topic_id
from shared.messages import WriteTarget

Value = bool | int | float
_TARGET: TypeAdapter[WriteTarget] = TypeAdapter(WriteTarget)


def _condition(text: str) -> Condition:
    try:
        return Condition.compile(text)
    except ExprError as exc:
        raise ValueError(str(exc)) from None


class WriteSpec(StrictModel):
    """What to write: `source` names the adapter; the other keys are its target, as it wants
    them (Modbus `{table, address, unit}` or `{point}`, OPC UA `{node}`)."""

    model_config = ConfigDict(extra="allow")

    source: str
    value: Value | None = None
    value_from: str | None = None  # a result field: the value written is that row's value

    _target: WriteTarget = PrivateAttr()

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return topic_id(value, "source")

    @model_validator(mode="after")
    def _one_value(self) -> Self:
        if (self.value is None) == (self.value_from is None):
            raise ValueError("write needs exactly one of 'value' or 'value_from'")
        if not self.target:
            raise ValueError("write needs the target's keys beside 'source' (e.g. table, address)")
        try:
            self._target = _TARGET.validate_python(self.target)
        except ValidationError:
            raise ValueError(
                f"write target {self.target} is none of: Modbus {{point}} or "
                "{table, address, unit}, OPC UA {signal} or {node}"
            ) from None
        return self

    @property
    def write_target(self) -> WriteTarget:
        """The target as the adapter's write server reads it."""
        return self._target

    @property
    def target(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Conditional(StrictModel):
    """A spec with a `when:` condition, parsed once when the config is loaded."""

    when: str

    _condition: Condition = PrivateAttr()

    @field_validator("when")
    @classmethod
    def _parse(cls, value: str) -> str:
        _condition(value)
        return value

    def model_post_init(self, _context: Any) -> None:
        self._condition = _condition(self.when)

    @property
    def condition(self) -> Condition:
        return self._condition


class ResetSpec(Conditional):
    for_samples: int = Field(1, ge=1)
    value: Value


class Bounds(StrictModel):
    min: float | None = None
    max: float | None = None

    def violation(self, value: Value) -> str | None:
        v = float(value)
        if self.min is not None and v < self.min:
            return f"value {value!r} below the minimum {self.min:g}"
        if self.max is not None and v > self.max:
            return f"value {value!r} above the maximum {self.max:g}"
        if v != v:
            return "value is NaN"
        return None


class ActionSpec(Conditional):
    """One rule: when `when` holds for `for_samples` results, write; when `reset.when` holds,
    write the reset value."""

    name: str | None = None  # defaults to action-{n}, n counting from 1 in file order
    for_samples: int = Field(1, ge=1)
    write: WriteSpec
    reset: ResetSpec | None = None
    cooldown_s: float = Field(1.0, ge=0)  # least time between two writes of this action
    max_writes_per_minute: int = Field(6, ge=1)
    bounds: Bounds = Field(default_factory=Bounds)
    # Written when results stop or the actuator stops: a value, or `keep` to leave the output.
    # Omitted: the reset value if there is a reset, else `keep`.
    safe_value: Value | Literal["keep"] | None = None

    @property
    def safe(self) -> Value | None:
        """The value of the safe state, None to keep the output as it is."""
        if self.safe_value == "keep":
            return None
        if self.safe_value is not None:
            return self.safe_value
        return self.reset.value if self.reset is not None else None

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        named = [("write.value", self.write.value), ("safe_value", self.safe)]
        if self.reset is not None:
            named.append(("reset.value", self.reset.value))
        for key, value in named:
            if value is not None and (why := self.bounds.violation(value)):
                raise ValueError(f"{key}: {why} (bounds)")
        return self


class ActuatorConfig(ServiceConfig):
    flow: str
    # Whose retained status says which model is deployed and whether it is online.
    inference_instance: str | None = None  # default inference-{flow}
    model_sha256: str | None = None  # pinned: only results of this model are acted on
    require_inference_online: bool = True
    enabled: bool = False  # off: every decision is an event only, nothing is written
    dry_run: bool = False  # on: decisions are reported as what would be written
    max_result_age_ms: float = Field(2000.0, gt=0)  # older results are never acted on
    watchdog_s: float = Field(10.0, gt=0)  # no results this long: the safe state is taken
    write_timeout_s: float = Field(2.0, gt=0)  # the adapter's answer must come within this
    stop_timeout_s: float = Field(3.0, gt=0)  # for the safe state when the actuator stops
    # A suppression for the same reason is reported again at most this often (with a count).
    repeat_event_s: float = Field(10.0, ge=0)
    # Operators' holds survive restarts in {state_dir}/{instance}.holds.json.
    state_dir: Path = Path("var/actuator")
    actions: list[ActionSpec] = Field(default_factory=list)

    @field_validator("flow")
    @classmethod
    def _flow(cls, value: str) -> str:
        return topic_id(value, "flow")

    @model_validator(mode="after")
    def _names(self) -> Self:
        for n, action in enumerate(self.actions, start=1):
            if action.name is None:
                action.name = f"action-{n}"
            topic_id(action.name, "action name")
        names = [a.name for a in self.actions]
        dup = sorted({n for n in names if names.count(n) > 1 and n is not None})
        if dup:
            raise ValueError(f"action names must be unique: {dup}")
        if self.inference_instance is None:
            self.inference_instance = f"inference-{self.flow}"
        topic_id(self.inference_instance, "inference_instance")
        return self
