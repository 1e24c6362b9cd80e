"""Configuration of one inference instance: its flow and model settings, and the service keys.

`InferenceSettings` are the flow-derived settings only (no broker, no site); `InferenceConfig`
adds them to the shared service config base. A flow file maps onto them one key for one key
(`model`, `align.features` → `features`, `align.window` → `window`, ...), so deriving an instance
config from a flow stays a plain dict copy. Relative paths (model, scripts) start at the config
file's folder: `shared.config.load_config` resolves them, like every path of every config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.codec import Encoding
from shared.config import SessionConfig, TopicId


class ModelSpec(BaseModel):
    """Which model to serve: a file, or a library reference (`name@version`) via the cache."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = None
    ref: str | None = None
    name: str | None = None  # defaults to the file stem or the reference's name
    version: str | None = None  # defaults to the reference's version or the ONNX model_version
    input: str | None = None  # the input to feed; required only to check a model's input name

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.ref is None):
            raise ValueError("model needs exactly one of 'path' or 'ref'")
        return self


class ShadowSpec(ModelSpec):
    """A candidate model run beside the live one on the same samples (`shadow/{flow}`)."""

    # Result field -> output selector for the candidate. Omitted: the flow's `outputs`.
    outputs: dict[str, str] | None = None
    label: str | None = None  # result field compared for label agreement (default: first int)
    score: str | None = None  # result field compared for score difference (default: first float)

    def as_model(self) -> ModelSpec:
        return ModelSpec.model_validate(self.model_dump(exclude={"outputs", "label", "score"}))


class InferenceSettings(BaseModel):
    """The flow side of an inference instance."""

    model_config = ConfigDict(extra="forbid")

    flow: TopicId
    model: ModelSpec
    # Feature names in input order. Omitted: taken from the model's `edgefleet.features`.
    features: list[str] | None = None
    # W samples per model input: x is [N, F] for 1, [N, W, F] above.
    window: int = Field(default=1, ge=1)
    max_batch: int = Field(default=512, ge=1)  # samples per session.run at most
    # Event-loop passes without a new message before a batch runs: lets a backlog reach the
    # batch (see batching.py); 0 runs each message as soon as it is taken.
    settle_passes: int = Field(default=3, ge=0)
    # Sample messages waiting; when full, reading from the broker waits (back-pressure).
    max_queue: int = Field(default=256, ge=1)
    intra_op_threads: int = Field(default=1, ge=1)
    # A batch whose last run took longer than this is run in a worker thread (see README).
    offload_above_us: float = Field(default=2000.0, ge=0)
    # skip: drop and count samples with NaN/Inf, and results that are NaN/Inf (reported)
    on_nan: Literal["skip", "pass"] = "skip"
    preprocess: Path | None = None  # a script defining preprocess(x) -> x
    postprocess: Path | None = None  # a script defining postprocess(outputs) -> outputs
    # Result field -> model output selector (`name`, `name[column]`, `name[map key]`).
    # Omitted: every output under its own name, maps expanded to `{name}_{key}`.
    outputs: dict[str, str] | None = None
    encoding: Encoding = Encoding.MSGPACK
    shadow: ShadowSpec | None = None  # a candidate model run beside the live one
    # Samples (and runs) the health figures are computed over: the most recent ones.
    health_window: int = Field(default=4096, ge=16)
    # How often the model file is checked for a change (mtime, size, then sha256); 0: never.
    watch_s: float = Field(default=2.0, ge=0)
    # A candidate model is tried in a separate process first: how long it may take.
    candidate_timeout_s: float = Field(default=60.0, gt=0)


class InferenceConfig(SessionConfig, InferenceSettings):
    """The shared service keys (site, instance, broker, timings) plus the flow's settings."""

    publish_qos: int = 1
