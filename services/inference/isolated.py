"""Run a function on untrusted input in a separate Python process, with a timeout.

onnxruntime can abort or crash the process on a malformed model, a model can hang in a run, and
a user script runs whatever it imports. So such work runs in a child process (a plain
subprocess: multiprocessing's spawn leaves a resource tracker process behind): a module-level
function and its argument are pickled to its stdin, the verdict comes back as JSON on the last
line of its stdout. A hang, a crash or an error all become one exception for the caller
(`ModelError` unless told otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import EdgefleetError, ModelError

_ROOT = str(Path(__file__).resolve().parents[2])  # where `services` is importable from
CHILD_NICE = 10  # added to the child's niceness (lower priority)


def run_isolated(
    fn: Callable[[Any], Any],
    arg: Any,
    timeout_s: float,
    what: str,
    doing: str,
    error: type[EdgefleetError] = ModelError,
) -> Any:
    """`fn(arg)` in a child process; its JSON-serialisable result, or `error` saying why not.

    `what` names the input in messages ("model pump.onnx"), `doing` the work ("loading").
    """
    payload = pickle.dumps((fn, arg))
    try:
        proc = subprocess.run(
            _command(), input=payload, capture_output=True, env=_env(), timeout=timeout_s
        )
    except subprocess.TimeoutExpired:  # subprocess.run has killed and reaped the child
        raise error(_timeout(what, doing, timeout_s)) from None
    return _verdict(proc.stdout, proc.stderr, proc.returncode, what, error)


async def run_isolated_async(
    fn: Callable[[Any], Any],
    arg: Any,
    timeout_s: float,
    what: str,
    doing: str,
    error: type[EdgefleetError] = ModelError,
) -> Any:
    """`run_isolated` for async callers."""
    proc = await asyncio.create_subprocess_exec(
        *_command(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(pickle.dumps((fn, arg))), timeout_s)
    except TimeoutError:
        raise error(_timeout(what, doing, timeout_s)) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return _verdict(out, err, proc.returncode, what, error)


def _command() -> list[str]:
    return [sys.executable, "-m", __name__]


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _timeout(what: str, doing: str, timeout_s: float) -> str:
    return f"{what} did not finish {doing} within {timeout_s:g} s"


def _verdict(
    out: bytes, err: bytes, returncode: int | None, what: str, error: type[EdgefleetError]
) -> Any:
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except ValueError:
        verdict = None
    if not isinstance(verdict, dict):
        raise error(f"{what} crashed the process that tried it ({_death(returncode, err)})")
    if not verdict.get("ok"):
        raise error(str(verdict.get("error")))
    return verdict.get("result")


def _death(returncode: int | None, err: bytes) -> str:
    tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}: {tail[0][:200]}"
    return f"exit code {returncode}: {tail[0][:200]}"


def _child() -> None:
    """`python -m services.inference.isolated`: (function, argument) pickled on stdin."""
    # A trial is background work: at a lower priority, the live model (and every other service
    # of a small edge box) keeps the CPU while onnxruntime is imported and the candidate runs.
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    fn, arg = pickle.loads(sys.stdin.buffer.read())
    try:
        verdict = {"ok": True, "result": fn(arg)}
    except EdgefleetError as exc:
        verdict = {"ok": False, "error": str(exc)}
    except BaseException as exc:  # anything else is still the input's verdict
        verdict = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("\n" + json.dumps(verdict) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _child()
