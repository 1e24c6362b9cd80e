"""Hot swap: a new config or a changed model file becomes a candidate engine, tried in a separate
process, then loaded and warmed beside the live one. The service switches the reference between
two batches, so every queued sample is run by the old model or the new one, never by neither.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError, ModelError

from .candidate import Trial, try_candidate
from .config import InferenceConfig, InferenceSettings, ModelSpec, ShadowSpec
from .engine import Engine, build_engine, model_inputs
from .isolated import Warm
from .model import ModelBlob, resolve_model

log = logging.getLogger(__name__)

TRIAL_SAMPLES = 8
WARM_RUNS = 3


@dataclass(frozen=True)
class SwapRequest:
    """Something to apply: a config (new revision, or the running one) and what to reload."""

    config: InferenceConfig
    reason: str
    reload_live: bool = False  # the model file changed: load it again even if the spec did not
    reload_shadow: bool = False


def live_key(settings: InferenceSettings) -> tuple[Any, ...]:
    """What the live engine is built from: a change in any of these rebuilds it."""
    s = settings
    return (s.model, s.outputs, s.preprocess, s.postprocess, s.on_nan, s.intra_op_threads)


def shadow_settings(settings: InferenceSettings, shadow: ShadowSpec) -> InferenceSettings:
    return settings.model_copy(
        update={
            "model": shadow.as_model(),
            "outputs": shadow.outputs if shadow.outputs is not None else settings.outputs,
            "shadow": None,
        }
    )


def read_blob(spec: ModelSpec) -> ModelBlob:
    return resolve_model(spec)


def file_signature(path: Path | None) -> tuple[int, int] | None:
    """(mtime_ns, size) of the model file: the cheap check before hashing it."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def prepare(
    settings: InferenceSettings,
    features: list[str],
    recent_x: np.ndarray[Any, Any] | None,
    timeout_s: float,
    unless_sha: str | None = None,
    trials: Warm | None = None,
) -> Engine | None:
    """A checked, loaded and warmed engine for `settings`; ModelError/ConfigError if unfit;
    None when the model's sha256 is `unless_sha` (a file touched, not changed).

    The bytes tried in the separate process are the bytes loaded here, so a file replaced again
    in between cannot slip in untried.
    """
    blob = await asyncio.to_thread(read_blob, settings.model)
    if unless_sha is not None and sha256(blob.data) == unless_sha:
        return None
    if recent_x is None or len(recent_x) == 0:
        shape = (1, len(features)) if settings.window == 1 else (1, settings.window, len(features))
        recent_x = np.zeros(shape, np.float32)
    x = recent_x[:TRIAL_SAMPLES]
    width, model_x = model_inputs(settings, features, x)
    pinned = settings.model_copy(update={"features": list(features)})
    trial = Trial(blob, pinned, width, model_x, settings.intra_op_threads)
    await try_candidate(trial, timeout_s, trials)

    def load() -> Engine:
        engine = build_engine(pinned, lambda _spec: blob)
        for _ in range(WARM_RUNS):  # the first runs of a session allocate; pay that now
            engine.model.run(model_x)
        return engine

    try:
        return await asyncio.to_thread(load)
    except (ModelError, ConfigError):
        raise
    except Exception as exc:
        raise ModelError(f"candidate {blob.origin} failed to load: {exc}") from None
