"""Configuration of one aligner instance: the broker settings every service has, plus its flow."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from shared.config import ServiceConfig
from shared.flow import FlowSpec, load_flow


class AlignerConfig(ServiceConfig):
    """The flow inline (`flow:`, as `edgefleet up` writes it) or by path (`flow_file:`,
    relative to the config file's folder like every path in a config)."""

    flow: FlowSpec | None = None
    flow_file: Path | None = None
    encoding: Literal["msgpack", "json"] = "msgpack"  # of the samples published
    publish_qos: int = Field(1, ge=0, le=1)
    subscribe_qos: int = Field(1, ge=0, le=1)
    # Readings stamped further ahead of the local clock are dropped, counted and reported per
    # source, so a source whose clock runs far ahead cannot fill the memory.
    max_ahead_ms: float = Field(60_000.0, gt=0)
    # Take the adapters' "complete up to t" (a batch's `complete`) as progress of every signal
    # of the batch; false for a source whose timestamps are not on the clock it reports by.
    use_complete: bool = True

    @model_validator(mode="after")
    def _one_flow(self) -> AlignerConfig:
        if (self.flow is None) == (self.flow_file is None):
            raise ValueError("give exactly one of 'flow' (inline) or 'flow_file' (a path)")
        return self

    def flow_spec(self) -> FlowSpec:
        """The flow; a flow file is read and validated here (`ConfigError` names file, line
        and key)."""
        if self.flow is not None:
            return self.flow
        assert self.flow_file is not None  # the validator saw to it
        path = self.flow_file if self.flow_file.is_absolute() else self.source_dir / self.flow_file
        return load_flow(path)
