"""Try a candidate model in a separate process before it comes near the live one.

onnxruntime can abort or crash the process on a malformed model, and a model can hang in a
run. So a candidate is opened, checked against the flow and run on a few samples in a separate
Python process (a plain subprocess: multiprocessing's spawn leaves a resource tracker process
behind) with a timeout; only a candidate that passes there is loaded in the service itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ModelError

from .model import Expected, ModelBlob, check_model, open_model


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


def _child() -> None:
    """`python -m services.inference.candidate`: a pickled Trial on stdin, the verdict (JSON)
    on the last line of stdout."""
    trial = pickle.loads(sys.stdin.buffer.read())
    try:
        verdict = {"ok": True, "outputs": run_trial(trial)}
    except ModelError as exc:
        verdict = {"ok": False, "error": str(exc)}
    except BaseException as exc:  # anything else is still the candidate's verdict
        verdict = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("\n" + json.dumps(verdict) + "\n")
    sys.stdout.flush()


_ROOT = str(Path(__file__).resolve().parents[2])  # where `services` is importable from


async def try_candidate(trial: Trial, timeout_s: float) -> dict[str, Any]:
    """Run the trial in a separate process; raise ModelError if it fails, crashes or hangs."""
    root = _ROOT
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(pickle.dumps(trial)), timeout_s)
    except TimeoutError:
        raise ModelError(
            f"candidate {trial.blob.origin} did not finish loading and a trial run of "
            f"{len(trial.x)} samples within {timeout_s:g} s"
        ) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except ValueError:
        verdict = None
    if not isinstance(verdict, dict):
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise ModelError(
            f"candidate {trial.blob.origin} crashed the process that tried it "
            f"({_how(proc.returncode)}: {tail[0][:200]})"
        )
    if not verdict.get("ok"):
        raise ModelError(str(verdict.get("error")))
    return dict(verdict.get("outputs") or {})


def _how(returncode: int | None) -> str:
    """`killed by SIGSEGV` for a process a signal ended (a negative return code), else the code."""
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


if __name__ == "__main__":
    _child()
