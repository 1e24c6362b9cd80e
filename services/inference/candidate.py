"""Try a candidate model in a separate process before it comes near the live one.

onnxruntime can abort or crash the process on a malformed model, and a model can hang in a
run. So a candidate is opened, checked against the flow and run on a few samples in a separate
process with a timeout (`isolated.py`); only a candidate that passes there is loaded in the
service itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import InferenceSettings
from .isolated import run_isolated_async
from .model import ModelBlob, open_model
from .signature import check_fits


@dataclass(frozen=True)
class Trial:
    """What the candidate is tried with: its bytes, the flow, sample inputs."""

    blob: ModelBlob
    settings: InferenceSettings  # `features` set: the ones the instance serves
    width: int  # features per sample after any preprocess script
    x: np.ndarray[Any, Any]  # model inputs (after any preprocess script), a few samples
    intra_op_threads: int = 1


def run_trial(trial: Trial) -> dict[str, Any]:
    """Open, check, run: in the child process. Returns output shapes; raises what went wrong."""
    model = open_model(trial.blob, trial.intra_op_threads)
    model.use(
        check_fits(model.signature, trial.settings, width=trial.width, origin=trial.blob.origin)
    )
    outputs = model.run(trial.x)
    return {name: list(np.shape(v)) for name, v in outputs.items()}


async def try_candidate(trial: Trial, timeout_s: float) -> dict[str, Any]:
    """Run the trial in a separate process; raise ModelError if it fails, crashes or hangs."""
    doing = f"loading and a trial run of {len(trial.x)} samples"
    result = await run_isolated_async(
        run_trial, trial, timeout_s, f"candidate {trial.blob.origin}", doing
    )
    return dict(result or {})
