"""Try a candidate model in a separate process before it comes near the live one.

onnxruntime can abort or crash the process on a malformed model, and a model can hang in a
run. So a candidate is opened, checked against the flow and run on a few samples in a spawned
process with a timeout; only a candidate that passes there is loaded in the service itself.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from shared.errors import ModelError

from .model import Expected, ModelBlob, check_model, open_model

JOIN_AFTER_KILL_S = 5.0


@dataclass(frozen=True)
class Trial:
    """What the candidate is tried with: its bytes, what the flow delivers, sample inputs."""

    blob: ModelBlob
    expected: Expected
    x: np.ndarray[Any, Any]  # model inputs (after any preprocess script), a few samples
    intra_op_threads: int = 1


def run_trial(trial: Trial) -> dict[str, Any]:
    """Open, check, run: in the child process. Returns output shapes; raises what went wrong."""
    model = open_model(trial.blob, trial.intra_op_threads)
    check_model(model, trial.expected)
    outputs = model.run(trial.x)
    return {name: list(np.shape(v)) for name, v in outputs.items()}


def _child(conn: Connection, trial: Trial) -> None:
    try:
        conn.send(("ok", run_trial(trial)))
    except ModelError as exc:
        conn.send(("refused", str(exc)))
    except BaseException as exc:  # anything else is still the candidate's verdict
        conn.send(("refused", f"{type(exc).__name__}: {exc} ({traceback.format_exc(limit=1)})"))
    finally:
        conn.close()


async def try_candidate(trial: Trial, timeout_s: float) -> dict[str, Any]:
    """Run the trial in a spawned process; raise ModelError if it fails, crashes or hangs."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, trial), name="edgefleet-candidate", daemon=True)
    proc.start()
    child.close()
    try:
        ready = await asyncio.to_thread(parent.poll, timeout_s)
        if not ready:
            raise ModelError(
                f"candidate {trial.blob.origin} did not finish loading and a trial run of "
                f"{len(trial.x)} samples within {timeout_s:g} s"
            )
        try:
            verdict, detail = parent.recv()
        except (EOFError, OSError):
            await asyncio.to_thread(proc.join, JOIN_AFTER_KILL_S)
            raise ModelError(
                f"candidate {trial.blob.origin} crashed the process that tried it "
                f"(exit code {proc.exitcode})"
            ) from None
        if verdict != "ok":
            raise ModelError(str(detail))
        return dict(detail)
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
        await asyncio.to_thread(proc.join, JOIN_AFTER_KILL_S)
