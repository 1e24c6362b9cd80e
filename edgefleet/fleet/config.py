"""The fleet service's config (`edgefleet run fleet --config fleet.yaml`)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from shared.config import ServiceConfig, StrictModel, TopicId
from shared.errors import ConfigError
from shared.metrics import FLEET_PORT, MetricsSettings


class S3Config(StrictModel):
    """Any S3: MinIO, AWS, SeaweedFS. The secret key comes from an environment variable or a
    file, never from the config itself."""

    endpoint: str = "127.0.0.1:8333"  # host:port, no scheme
    secure: bool = False  # https
    region: str = "us-east-1"  # given, so presigning needs no round trip to the server
    bucket: str = "edgefleet"
    access_key: str = "edgefleet"
    access_key_env: str | None = None  # read the access key from this variable instead
    secret_key_env: str | None = None
    secret_key_file: Path | None = None
    # The endpoint presigned URLs name, when clients reach S3 by another address than the
    # fleet does (a container network); default: `endpoint`.
    public_endpoint: str | None = None
    url_expiry_s: int = Field(900, ge=60, le=7 * 24 * 3600)

    def access_key_id(self) -> str:
        if self.access_key_env:
            value = os.environ.get(self.access_key_env)
            if value is None:
                raise ConfigError(f"s3.access_key_env: variable {self.access_key_env} is not set")
            return value
        return self.access_key

    def secret_key(self) -> str:
        if self.secret_key_env:
            value = os.environ.get(self.secret_key_env)
            if value is None:
                raise ConfigError(f"s3.secret_key_env: variable {self.secret_key_env} is not set")
            return value
        if self.secret_key_file:
            try:
                return self.secret_key_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"s3.secret_key_file: cannot read it: {exc}") from None
        raise ConfigError("s3: give secret_key_env or secret_key_file")


class FleetMetrics(MetricsSettings):
    """The fleet's `/metrics` (docs/metrics.md)."""

    port: int = Field(FLEET_PORT, ge=0, le=65535, description="0 picks a free one (tests)")


class DebugConfig(StrictModel):
    """Limits of debug sessions (docs/debug.md); each node has its own as well."""

    max_seconds: float = Field(600.0, gt=0)  # longest session `debug.open` grants
    max_rate_hz: float = Field(10.0, gt=0)  # messages per second per topic
    max_sessions: int = Field(4, ge=1)  # open at once per node
    max_filters: int = Field(16, ge=1)  # topic filters of one session


class Config(ServiceConfig):
    site: TopicId = "cloud"  # the fleet's own status: ef/cloud/status/fleet
    instance: TopicId = "fleet"
    db: Path = Path("fleet.db")  # SQLite metadata, relative to this file's folder
    s3: S3Config = Field(default_factory=lambda: S3Config.model_validate({}))
    work_dir: Path = Path("work")  # temporary copies of uploads while they are checked
    max_upload_mb: int = Field(2048, ge=1)
    inspect_timeout_s: float = Field(60.0, gt=0)  # loading a pushed model in a separate process
    workers: int = Field(4, ge=1)  # commands served at once (a commit reads a whole blob)
    sweep_interval_s: float = Field(300.0, gt=0)  # removing staged uploads never committed
    # The Ed25519 key desired states are signed with (edgefleet keys create); agents trust its
    # public half. Without one the fleet serves everything but deploy.
    signing_key: Path | None = None
    deploy_check_interval_s: float = Field(1.0, gt=0)  # how often node timeouts are checked
    # An `online` node not heard from for this long shows `stale`: agents announce their status
    # every `timings.status_interval_s` (10 s by default), so three heartbeats missed
    node_stale_after_s: float = Field(30.0, gt=0)
    metrics: FleetMetrics | None = None  # serve Prometheus /metrics; absent: not served
    debug: DebugConfig = Field(default_factory=lambda: DebugConfig.model_validate({}))
