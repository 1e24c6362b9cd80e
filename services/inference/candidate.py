"""Try a candidate model in a separate process before it comes near the live one.

onnxruntime can abort or crash the process on a malformed model, and a model can hang in a
run. So a candidate is opened, checked against the flow and run on a few samples in a separate
process with a timeout (`isolated.py`); only a candidate that passes there is loaded in the
service itself. Each instance keeps one such process warm (`trial_process`): onnxruntime is
imported there once, so trying a candidate costs the live model next to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import InferenceSettings
from .isolated import Warm, run_isolated_async
from .model import ModelBlob, open_model
from .signature import check_fits

# A trial is background work: below the live model (and the other services of a small box).
TRIAL_NICE = 10


def trial_process() -> Warm:
    """The instance's warm trial process: this module (so onnxruntime) imported, at TRIAL_NICE."""
    return Warm(__name__, nice=TRIAL_NICE)


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


async def try_candidate(trial: Trial, timeout_s: float, warm: Warm | None = None) -> dict[str, Any]:
    """Run the trial in a separate process (`warm`, or a new one); raise ModelError if it
    fails, crashes or hangs."""
    doing = f"loading and a trial run of {len(trial.x)} samples"
    what = f"candidate {trial.blob.origin}"
    if warm is not None:
        result = await warm.run(run_trial, trial, timeout_s, what, doing)
    else:
        result = await run_isolated_async(run_trial, trial, timeout_s, what, doing, nice=TRIAL_NICE)
    return dict(result or {})
