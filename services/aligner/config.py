"""Configuration of one aligner instance: the broker settings every service has, plus its flow."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from shared.config import ServiceConfig
from shared.flow import FlowSpec, load_flow


class AlignerConfig(ServiceConfig):
    """The flow inline (`flow:`, as `edgefleet up` writes it) or by path (`flow_file:`, read
    from the working directory when relative). The flow file is read and validated with the
    config, so `edgefleet run aligner --check` checks both."""

    flow: FlowSpec | None = None
    flow_file: Path | None = None
    encoding: Literal["msgpack", "json"] = "msgpack"  # of the samples published
    publish_qos: int = Field(1, ge=0, le=1)
    subscribe_qos: int = Field(1, ge=0, le=1)

    @model_validator(mode="after")
    def _one_flow(self) -> AlignerConfig:
        if (self.flow is None) == (self.flow_file is None):
            raise ValueError("give exactly one of 'flow' (inline) or 'flow_file' (a path)")
        if self.flow_file is not None:
            # ConfigError (not a ValueError) passes through pydantic and names the flow file.
            self.flow = load_flow(self.flow_file)
        return self

    @property
    def flow_spec(self) -> FlowSpec:
        assert self.flow is not None  # set by the validator
        return self.flow
