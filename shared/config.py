"""Service configuration: YAML files validated by pydantic, with environment overrides.

Unknown keys are refused; every error names the file, the line and the dotted key. Secrets are
never written in the file: `*_env` / `*_file` keys say where to read them (`secret`). A broker
is `{host, port, ...}` or the short form `"host:port"`; `BrokerConfig.settings` turns it into
the MQTT client's settings, for every connection any service or tool opens.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from shared.errors import ConfigError, TopicError
from shared.mqtt import BrokerSettings
from shared.topics import DEFAULT_PREFIX, validate_id

ENV_PREFIX = "EDGEFLEET_"  # EDGEFLEET_BROKER__PORT=1884 overrides broker.port


def topic_id(value: str, what: str = "id") -> str:
    """`value` if it can be one topic level; else a ValueError for pydantic to report."""
    try:
        return validate_id(value, what)
    except TopicError as exc:
        raise ValueError(str(exc)) from None


TopicId = Annotated[str, AfterValidator(topic_id)]
"""A config value that becomes one topic level (site, instance, source, flow, signal)."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def secret(what: str, env: str | None, file: Path | None = None) -> str | None:
    """A secret from the environment variable `env`, else from `file` (stripped), else None;
    `what` is the key without its `_env`/`_file` suffix, for the error (e.g. `broker.password`)."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{what}_env: variable {env} is not set")
        return value
    if file:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{what}_file: cannot read it: {exc}") from None
    return None


HOST_PORT = r"^[^\s:/]+(:[0-9]{1,5})?$"  # "host" or "host:port" (IPv6: use {host, port})


def _host_port(data: Any) -> Any:
    """`"host:port"` (or `"host"`) as `{host, port}`; anything else as it came."""
    if not isinstance(data, str):
        return data
    host, sep, port = data.rpartition(":")
    if not sep:
        return {"host": data}
    if not host or not port.isdigit():
        raise ValueError(f"expected 'host:port' or a mapping of broker keys, got {data!r}")
    return {"host": host, "port": int(port)}


def _or_host_port(schema: dict[str, Any]) -> None:
    """The JSON Schema of a broker: the mapping, or the `host:port` string."""
    mapping = dict(schema)
    schema.clear()
    schema["anyOf"] = [{"type": "string", "pattern": HOST_PORT, "title": "host:port"}, mapping]
    schema["title"] = mapping.pop("title", "Broker")


class BrokerConfig(StrictModel):
    """An MQTT broker: `{host, port, username, ...}`, or `"host:port"` when nothing else is set."""

    model_config = ConfigDict(json_schema_extra=_or_host_port)

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password_env: str | None = None  # name of the environment variable holding the password
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(30, ge=5)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return _host_port(data)

    def password(self) -> str | None:
        return secret("broker.password", self.password_env, self.password_file)

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file:
            context.load_cert_chain(
                str(self.cert_file), str(self.key_file) if self.key_file else None
            )
        return context

    def settings(
        self, client_id: str, timings: Timings | None = None, **overrides: Any
    ) -> BrokerSettings:
        """The MQTT client's settings for this broker: credentials and TLS read now, the
        reconnect and buffer limits from `timings` (the defaults without), then `overrides`."""
        t = timings or Timings.model_validate({})
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "client_id": client_id,
            "username": self.username,
            "password": self.password(),
            "tls": self.tls_context(),
            "keepalive_s": self.keepalive_s,
            "max_inflight": t.max_inflight,
            "outbox_max": t.outbox_max,
            "reconnect_initial_s": t.reconnect_initial_s,
            "reconnect_max_s": t.reconnect_max_s,
        }
        values.update(overrides)
        return BrokerSettings(**values)


class Timings(StrictModel):
    """Timing constants are settings, so tests can shrink them."""

    status_interval_s: float = Field(10.0, gt=0)
    error_report_interval_s: float = Field(5.0, gt=0)
    reconnect_initial_s: float = Field(0.2, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)
    outbox_max: int = Field(10_000, ge=1)
    max_inflight: int = Field(100, ge=1)


class ServiceConfig(StrictModel):
    """What every service instance needs; each service's config extends it."""

    site: TopicId
    instance: TopicId
    prefix: TopicId = DEFAULT_PREFIX
    broker: BrokerConfig = Field(default_factory=lambda: BrokerConfig.model_validate({}))
    timings: Timings = Field(default_factory=lambda: Timings.model_validate({}))
    log_level: str = "INFO"
    revision: int = 0  # a retained config with a higher revision replaces this one
    _source_dir: Path | None = PrivateAttr(default=None)

    @property
    def source_dir(self) -> Path:
        """The folder of the file this config came from: relative paths in it start there."""
        return self._source_dir or Path.cwd()

    def set_source_dir(self, base: Path) -> None:
        """Make every relative path of this config start at `base`, and remember it (a later
        update of the config, e.g. a retained revision, resolves its paths there too)."""
        resolve_paths(self, base)
        self._source_dir = base

    def broker_settings(self, **overrides: Any) -> BrokerSettings:
        return self.broker.settings(f"{self.site}-{self.instance}", self.timings, **overrides)


class SessionConfig(ServiceConfig):
    """A service whose input must not be lost while it is away: its site connection is a
    persistent session (its fixed client id, clean_start False, a session expiry), so the broker
    queues its QoS 1 input while it reconnects, restarts, or while a restarted broker waits for
    it; the subscriptions it made are restored from the broker's persistence too."""

    session_expiry_s: int = Field(300, ge=0)  # how long the site broker keeps our session

    def broker_settings(self, **overrides: Any) -> BrokerSettings:
        values: dict[str, Any] = {"clean_start": False, "session_expiry_s": self.session_expiry_s}
        values.update(overrides)
        return super().broker_settings(**values)


M = TypeVar("M", bound=BaseModel)


def _key_lines(node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    """Record the line of every key path, so an error can point at it."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            _key_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*path, str(i))
            out[key] = item.start_mark.line + 1
            _key_lines(item, key, out)


def read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse a YAML file; return the data and the line of each key path."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _key_lines(node, (), lines)
    return data, lines


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Apply EDGEFLEET_A__B=value overrides (values parsed as YAML scalars)."""
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        target = data
        for key in keys[:-1]:
            nested = target.setdefault(key, {})
            if key == "broker" and isinstance(nested, str):  # the short form, "host:port"
                nested = target[key] = _host_port(nested)
            if not isinstance(nested, dict):
                raise ConfigError(f"environment {name}: {key} is not a section")
            target = nested
        target[keys[-1]] = yaml.safe_load(raw) if raw else raw
    return data


def format_errors(
    exc: ValidationError, source: str, lines: Mapping[tuple[str, ...], int] | None = None
) -> str:
    """One line per error: `file:line: dotted.key: what is wrong`."""
    out = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        line = None
        if lines:
            for n in range(len(loc), 0, -1):  # the deepest key that exists in the file
                if loc[:n] in lines:
                    line = lines[loc[:n]]
                    break
        where = f"{source}:{line}" if line else source
        key = ".".join(loc) or "(top level)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        message = message.removeprefix("Value error, ")
        out.append(f"{where}: {key}: {message}")
    return "\n".join(out)


def validate(
    model: type[M],
    data: Any,
    source: str,
    lines: Mapping[tuple[str, ...], int] | None = None,
) -> M:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, lines)) from None


def load_config(path: Path | str, model: type[M], env: Mapping[str, str] | None = None) -> M:
    """Read, override from the environment, and validate one config file."""
    path = Path(path)
    data, lines = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    data = apply_env(data, os.environ if env is None else env)
    config = validate(model, data, str(path), lines)
    base = path.resolve().parent
    if isinstance(config, ServiceConfig):
        config.set_source_dir(base)
    else:
        resolve_paths(config, base)
    return config


def resolve_paths(node: Any, base: Path) -> None:
    """Make every relative Path in a loaded config start at `base` (the one place this is done:
    configs, flow files and site-derived configs all come through here)."""
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            value = getattr(node, name)
            if isinstance(value, Path):
                if not value.is_absolute():
                    object.__setattr__(node, name, base / value)
            else:
                resolve_paths(value, base)
    elif isinstance(node, (list, tuple)):
        for item in node:
            resolve_paths(item, base)
    elif isinstance(node, dict):
        for item in node.values():
            resolve_paths(item, base)


# Keys a retained config cannot change: they name the instance (its topics, its client id).
IDENTITY_KEYS = ("site", "instance", "prefix")
C = TypeVar("C", bound=ServiceConfig)


def overlay(data: Mapping[str, Any], update: Mapping[str, Any], revision: int) -> dict[str, Any]:
    """A config mapping with a retained update's keys on top (an agent's full config, or the few
    keys a command changes), the identity keys kept and `revision` set: the one merge the
    service and the site supervisor both make."""
    merged = dict(data)
    merged.update({k: v for k, v in update.items() if k not in IDENTITY_KEYS})
    merged["revision"] = revision
    return merged


def merge_config(current: C, update: Any, revision: int) -> C:
    """The running config with a retained update on top, validated; relative paths start at the
    running config's folder. `ConfigError` names the revision and the offending key."""
    if not isinstance(update, dict):
        raise ConfigError(f"config revision {revision}: expected a mapping of keys")
    ignored = sorted(k for k in IDENTITY_KEYS if k in update and update[k] != getattr(current, k))
    if ignored:
        raise ConfigError(
            f"config revision {revision}: {ignored} name the instance and cannot change"
        )
    data = overlay(current.model_dump(mode="json"), update, revision)
    new = validate(type(current), data, f"config revision {revision}")
    new.set_source_dir(current.source_dir)
    return new


def changed_keys(old: BaseModel, new: BaseModel) -> set[str]:
    """The top-level keys whose values differ (`revision` aside)."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    return {k for k in a.keys() | b.keys() if k != "revision" and a.get(k) != b.get(k)}
