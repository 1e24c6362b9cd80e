"""Configuration of the OPC UA adapter: one server endpoint, its security, its signals.

Each signal is one node id with its own sampling interval; the server-side queue of each
monitored item is sized from the publishing interval so no sample is lost between publishes.
Secrets (the user's password, the private key's password) come from the environment or a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.config import ServiceConfig, StrictModel, TopicId, secret

Policy = Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"]
Mode = Literal["None", "Sign", "SignAndEncrypt"]


class SecurityConfig(StrictModel):
    """Message security of the session and the application certificate that signs it."""

    policy: Policy = "None"
    mode: Mode = "None"
    allow_none: bool = True  # false: refuse to run without Sign or SignAndEncrypt
    cert_file: Path = Path("pki/own/cert.der")  # generated with key_file on first run if absent
    key_file: Path = Path("pki/own/key.pem")
    key_password_env: str | None = None  # if the private key is encrypted
    application_uri: str = "urn:edgefleet:opcua-adapter"
    trusted: list[Path] = Field(default_factory=list)  # server certificates (files or folders)
    trust_any_server: bool = False  # accept any server certificate (testing only)

    @model_validator(mode="after")
    def _consistent(self) -> SecurityConfig:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError("policy and mode are both None, or neither is")
        if self.policy == "None" and not self.allow_none:
            raise ValueError("security mode None is refused by allow_none: false")
        if self.policy != "None" and not self.trusted and not self.trust_any_server:
            raise ValueError("a secure session needs `trusted` server certificates")
        return self


class AuthConfig(StrictModel):
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None

    def password(self) -> str | None:
        return secret("auth.password", self.password_env, self.password_file)


class SignalConfig(StrictModel):
    name: TopicId
    node: str  # node id, e.g. "ns=2;s=Pump.Flow" or "nsu=urn:edgefleet:sim;s=Pump.Flow"
    sampling_ms: float | None = Field(None, ge=0)  # default: the source's sampling_ms
    queue_size: int | None = Field(None, ge=1)  # default: enough for one publishing interval
    writable: bool = False


class WatchdogConfig(StrictModel):
    """How a dead, dropped or silent session is noticed, and how it is rebuilt."""

    request_timeout_s: float = Field(5.0, gt=0)  # each request to the server
    keepalive_s: float = Field(5.0, gt=0)  # the server's keep-alive period (subscription)
    dead_after_keepalives: float = Field(3.0, gt=1)  # publishes missing this many periods: dead
    stall_after_s: float | None = Field(30.0, gt=0)  # no data change at all this long: stalled
    check_s: float = Field(1.0, gt=0)  # how often the watchdog looks
    retry_nodes_s: float = Field(10.0, gt=0)  # node ids that failed are retried this often
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    session_timeout_s: float = Field(60.0, gt=0)


class OpcUaConfig(ServiceConfig):
    source: TopicId  # readings on ef/{site}/raw/{source}, writes served on ef/{site}/cmd/{source}
    endpoint: str  # opc.tcp://host:port/path
    security: SecurityConfig = Field(default_factory=lambda: SecurityConfig.model_validate({}))
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig.model_validate({}))
    publishing_ms: float = Field(100.0, gt=0)  # how often the server sends gathered changes
    sampling_ms: float = Field(100.0, ge=0)  # default sampling interval of a signal
    signals: list[SignalConfig] = Field(min_length=1)
    watchdog: WatchdogConfig = Field(default_factory=lambda: WatchdogConfig.model_validate({}))
    publish_qos: int = Field(0, ge=0, le=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith("opc.tcp://"):
            raise ValueError(f"endpoint must start with opc.tcp://, got {value!r}")
        return value

    @model_validator(mode="after")
    def _unique(self) -> OpcUaConfig:
        names = [s.name for s in self.signals]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"signal names must be unique in a source: {dup}")
        if len(names) > 65535:
            raise ValueError("at most 65535 signals per source")
        return self

    def sampling(self, signal: SignalConfig) -> float:
        return self.sampling_ms if signal.sampling_ms is None else signal.sampling_ms

    def queue_size(self, signal: SignalConfig) -> int:
        """Enough for every sample of one publishing interval, twice over (jitter, a late ack)."""
        if signal.queue_size is not None:
            return signal.queue_size
        sampling = self.sampling(signal) or 1.0
        return max(2, min(10_000, int(2 * self.publishing_ms / sampling) + 1))
