"""Run a function on untrusted input in a separate Python process, with a timeout.

onnxruntime can abort or crash the process on a malformed model, a model can hang in a run, and
a user script runs whatever it imports. So such work runs in a child process (a plain
subprocess: multiprocessing's spawn leaves a resource tracker process behind): a module-level
function and its argument are pickled to its stdin, the verdict comes back as JSON on the last
line of its stdout. A hang, a crash or an error all become one exception for the caller
(`ModelError` unless told otherwise). `Warm` keeps one such child for many calls, so a caller
that tries inputs again and again (inference's candidate models) pays the child's start and
imports once. A child runs at `nice` added to its niceness (`CHILD_NICE` unless told otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

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


class Ahead:
    """`fn((arg, data))` in a child process started before `data` exists: the child starts
    and imports while the caller waits for its input (an upload), and is given it in one piece
    when it is there (`send`). `result()` is the verdict, as `run_isolated`'s, taken as soon as
    the child writes it (its exit is not waited for).

    The child is killed when `timeout_s` pass without the input (from its start), `timeout_s`
    after the input came (the work itself), and on leaving the `with` block before a verdict
    (the caller gave up on it). Waiting for an upload is not a slow model.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        arg: Any,
        timeout_s: float,
        what: str,
        doing: str,
        error: type[EdgefleetError] = ModelError,
        *,
        nice: int = CHILD_NICE,
    ) -> None:
        self.timeout_s, self.what, self.doing, self.error = timeout_s, what, doing, error
        self.deadline = time.monotonic() + timeout_s
        # stderr in a file, not a pipe: nothing to drain while the child works, and the
        # verdict (stdout's one line) can be taken without waiting for the child's exit.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed when reaped)
        self.proc = subprocess.Popen(
            _command(nice),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=_env(),
        )
        self.timed_out, self.finished = threading.Event(), threading.Event()
        self.reaped = threading.Event()  # the child has exited and was waited for
        threading.Thread(target=self._watch, name="isolated-watchdog", daemon=True).start()
        self.broken, self.sent, self.done = False, False, False
        self._write(pickle.dumps((fn, arg, _LATER)))

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
            self.proc.stdin.flush()  # the header too: the child imports once it has it
        except (BrokenPipeError, OSError):
            self.broken = True  # the child died or was killed: `result()` says why

    def send(self, data: bytes) -> None:
        """The input, once."""
        assert not self.sent
        self.deadline = time.monotonic() + self.timeout_s
        self._write(len(data).to_bytes(8, "big") + data)
        self.sent = True

    def result(self) -> Any:
        """The verdict, as soon as the child writes it (its exit is not waited for: freeing
        what the work held is the kernel's business, reaped in the background)."""
        self.done = True
        self.deadline = time.monotonic() + self.timeout_s  # the watchdog kills a hang
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(BrokenPipeError, OSError):  # a child that died: see below
            self.proc.stdin.close()
        line = self.proc.stdout.readline()
        self.finished.set()
        if self.timed_out.is_set():
            self._reap()
            raise self.error(_timeout(self.what, self.doing, self.timeout_s))
        if not line:  # the child died (or was killed) before its verdict
            self._reap()
            self.stderr.seek(0)
            return _verdict(b"", self.stderr.read(), self.proc.returncode, self.what, self.error)
        threading.Thread(target=self._reap, name="isolated-reap", daemon=True).start()
        return _verdict(line, b"", 0, self.what, self.error)

    def _reap(self) -> None:
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.stderr.close()
        self.reaped.set()

    def __enter__(self) -> Ahead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finished.set()
        if not self.done:
            self.proc.kill()
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            self._reap()


class Warm:
    """One child process kept for many calls (`run`), one at a time. It imports `preload` once
    (for inference, onnxruntime: seconds on a small box), so a call costs pickling its argument
    and the work itself, not a Python start and an import. A call that crashes the child, hangs
    past its timeout or is cancelled kills it (the call is `error`, as with `run_isolated`) and a
    fresh child is started at once for the next call; one call's leftovers in the child's memory
    are only garbage for the next.

    `start()` (or the first call) starts it, `close()` kills it; a child whose parent dies, by
    SIGKILL too, is killed by the kernel (PR_SET_PDEATHSIG) or ends on its stdin's EOF.
    """

    def __init__(
        self, preload: str, nice: int = CHILD_NICE, error: type[EdgefleetError] = ModelError
    ) -> None:
        self.preload, self.nice, self.error = preload, nice, error
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr: IO[bytes] | None = None  # the child's stderr, for a death's message
        self.lock = asyncio.Lock()  # the child serves one call at a time
        self.started = 0  # children started in all (a crash or a hang starts another)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            return
        await self._kill()  # a child that died between calls: reap it
        # O_APPEND: truncated before each call, the child's writes start again at 0
        self.stderr = tempfile.TemporaryFile("a+b")  # noqa: SIM115 (closed by _kill)
        self.proc = await asyncio.create_subprocess_exec(
            *_command(self.nice, self.preload),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.stderr,
            env=_env(),
            limit=_ANSWER_LIMIT,
        )
        self.started += 1

    async def run(
        self, fn: Callable[[Any], Any], arg: Any, timeout_s: float, what: str, doing: str
    ) -> Any:
        """`fn(arg)` in the warm child within `timeout_s`: its result, or `self.error`."""
        async with self.lock:
            await self.start()
            proc, stderr = self.proc, self.stderr
            assert proc is not None and proc.stdin is not None and stderr is not None
            stderr.truncate(0)
            payload = pickle.dumps((fn, arg))
            proc.stdin.write(len(payload).to_bytes(8, "big") + payload)
            try:
                line = await asyncio.wait_for(self._answer(proc), timeout_s)
            except TimeoutError:
                await self._restart()
                raise self.error(_timeout(what, doing, timeout_s)) from None
            except ValueError:  # an answer past _ANSWER_LIMIT: not one the child meant
                await self._restart()
                raise self.error(f"{what} made the process that tried it answer garbage") from None
            except BaseException:  # cancelled mid-call: its answer must not be the next's
                await self._kill()
                raise
            if not line:  # stdout closed: the child died in the call
                await proc.wait()
                stderr.seek(0)
                err = stderr.read()
                await self._restart()
                raise self.error(
                    f"{what} crashed the process that tried it ({_death(proc.returncode, err)})"
                )
            return _verdict(line, b"", proc.returncode, what, self.error)

    @staticmethod
    async def _answer(proc: asyncio.subprocess.Process) -> bytes:
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(ConnectionError):  # a child that died: its stdout says so
            await proc.stdin.drain()
        while True:
            line = await proc.stdout.readline()
            if line != _READY:
                return line

    async def _restart(self) -> None:
        await self._kill()
        await self.start()

    async def close(self) -> None:
        await self._kill()  # a call in progress ends as crashed; the service is stopping

    async def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None


def _command(nice: int, preload: str | None = None) -> list[str]:
    warm = ["--warm", preload] if preload else []
    return [sys.executable, "-m", __name__, "--nice", str(nice), *warm]


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


_LATER = "later"  # an `Ahead` child's header: its input comes after
_ANSWER_LIMIT = 16 << 20  # an answer line (an error message, output shapes) is far shorter
_READY = b"ready\n"  # a warm child's first line: imported, waiting for calls


def _child(argv: list[str]) -> None:
    """`python -m services.inference.isolated --nice N`: (function, argument) pickled on stdin,
    or (function, argument, "later") and, when the caller has it, an 8-byte length and the
    input (`Ahead`): then `fn((arg, data))`. With `--warm MODULE`: MODULE imported,
    then calls one after the other, each an 8-byte length and a pickled (function, argument),
    each answered by one line."""
    nice = int(argv[argv.index("--nice") + 1]) if "--nice" in argv else CHILD_NICE
    # A trial is background work: at a lower priority, the live model (and every other service
    # of a small edge box) keeps the CPU while onnxruntime is imported and the candidate runs.
    with contextlib.suppress(OSError):
        os.nice(nice)
    if "--warm" in argv:
        _serve(argv[argv.index("--warm") + 1])
        return
    answers = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # what the work prints goes to stderr, never among the answers
    stdin = sys.stdin.buffer
    header = pickle.load(stdin)
    if len(header) == 3 and header[2] == _LATER:  # `Ahead`: a length, then the input
        fn, arg, _ = header
        arg = (arg, stdin.read(int.from_bytes(stdin.read(8), "big")))
    else:
        fn, arg = header
    answers.write(json.dumps(_call(fn, arg)).encode() + b"\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # The verdict is out: no interpreter teardown (freeing a 100 MB model, onnxruntime's
    # session and threads took 0.3-0.4 s that the caller, waiting for the exit, paid).
    os._exit(0)


def _serve(preload: str) -> None:
    with contextlib.suppress(OSError, AttributeError):  # Linux: die with the parent
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    answers = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # what the work prints goes to stderr, never among the answers
    importlib.import_module(preload)
    answers.write(_READY)
    stdin = sys.stdin.buffer
    while len(head := stdin.read(8)) == 8:
        fn, arg = pickle.loads(stdin.read(int.from_bytes(head, "big")))
        answers.write(json.dumps(_call(fn, arg)).encode() + b"\n")


_PR_SET_PDEATHSIG = 1


def _call(fn: Callable[[Any], Any], arg: Any) -> dict[str, Any]:
    try:
        return {"ok": True, "result": fn(arg)}
    except EdgefleetError as exc:
        return {"ok": False, "error": str(exc)}
    except BaseException as exc:  # anything else is still the input's verdict
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    _child(sys.argv[1:])
