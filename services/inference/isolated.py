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
import threading
import time
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
    *,
    nice: int = CHILD_NICE,
) -> Any:
    """`fn(arg)` in a child process; its JSON-serialisable result, or `error` saying why not.

    `what` names the input in messages ("model pump.onnx"), `doing` the work ("loading").
    """
    payload = pickle.dumps((fn, arg))
    try:
        proc = subprocess.run(
            _command(nice), input=payload, capture_output=True, env=_env(), timeout=timeout_s
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
    *,
    nice: int = CHILD_NICE,
) -> Any:
    """`run_isolated` for async callers."""
    proc = await asyncio.create_subprocess_exec(
        *_command(nice),
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


class Streamed:
    """`fn((arg, data))` in a child process, `data` (`size` bytes) written by the caller while
    it arrives (`feed`): the child starts, imports and receives the bytes while the caller is
    still downloading them, instead of after. `result()` is the verdict, as `run_isolated`'s.

    The child is killed when `timeout_s` pass with no progress (its start, each chunk fed) and
    `timeout_s` after `result()` is asked for (the work itself), and on leaving the `with` block
    before a verdict (the caller refused the input). A slow download is not a slow model.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        arg: Any,
        size: int,
        timeout_s: float,
        what: str,
        doing: str,
        error: type[EdgefleetError] = ModelError,
        *,
        nice: int = CHILD_NICE,
    ) -> None:
        self.size, self.sent = size, 0
        self.timeout_s, self.what, self.doing, self.error = timeout_s, what, doing, error
        self.deadline = time.monotonic() + timeout_s
        self.proc = subprocess.Popen(
            _command(nice),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
        self.timed_out, self.finished = threading.Event(), threading.Event()
        threading.Thread(target=self._watch, name="isolated-watchdog", daemon=True).start()
        self.broken, self.done = False, False
        self._write(pickle.dumps((fn, arg, size)))

    def _watch(self) -> None:
        while not self.finished.wait(max(0.0, self.deadline - time.monotonic())):
            if time.monotonic() >= self.deadline:
                self.timed_out.set()
                self.proc.kill()
                return

    def _write(self, data: bytes | memoryview) -> None:
        if self.broken:
            return
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
        except (BrokenPipeError, OSError):
            self.broken = True  # the child died or was killed: `result()` says why

    def feed(self, chunk: bytes) -> None:
        """The next bytes of `data`; what goes past `size` is not sent (the caller refuses)."""
        room = self.size - self.sent
        if room > 0:
            self.deadline = time.monotonic() + self.timeout_s
            self._write(memoryview(chunk)[:room] if len(chunk) > room else chunk)
            self.sent += min(room, len(chunk))

    def result(self) -> Any:
        self.done = True
        self.deadline = time.monotonic() + self.timeout_s
        try:
            out, err = self.proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise self.error(_timeout(self.what, self.doing, self.timeout_s)) from None
        except (BrokenPipeError, OSError):  # closing stdin of a child that died
            out, err = self.proc.communicate()
        finally:
            self.finished.set()
        if self.timed_out.is_set():
            raise self.error(_timeout(self.what, self.doing, self.timeout_s))
        return _verdict(out, err, self.proc.returncode, self.what, self.error)

    def __enter__(self) -> Streamed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finished.set()
        if not self.done:
            self.proc.kill()
            self.proc.communicate()


def _command(nice: int) -> list[str]:
    return [sys.executable, "-m", __name__, "--nice", str(nice)]


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


def _child(argv: list[str]) -> None:
    """`python -m services.inference.isolated --nice N`: (function, argument) pickled on stdin,
    or (function, argument, size) followed by `size` raw bytes (`Streamed`): then
    `fn((arg, data))`."""
    nice = int(argv[argv.index("--nice") + 1]) if "--nice" in argv else CHILD_NICE
    # A trial is background work: at a lower priority, the live model (and every other service
    # of a small edge box) keeps the CPU while onnxruntime is imported and the candidate runs.
    with contextlib.suppress(OSError):
        os.nice(nice)
    stdin = sys.stdin.buffer
    header = pickle.load(stdin)
    if len(header) == 3:
        fn, arg, size = header
        data = stdin.read(size)
        arg = (arg, data)
    else:
        fn, arg = header
    try:
        verdict = {"ok": True, "result": fn(arg)}
    except EdgefleetError as exc:
        verdict = {"ok": False, "error": str(exc)}
    except BaseException as exc:  # anything else is still the input's verdict
        verdict = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("\n" + json.dumps(verdict) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _child(sys.argv[1:])
