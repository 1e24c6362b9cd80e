"""No instance outlives the `edgefleet up` that started it, not even a SIGKILLed one.

The instances and the local broker run in sessions of their own (a Ctrl-C in the terminal
reaches `up` only, which then stops them in order), so a signal to `up`'s process group does
not reach them, and a SIGKILLed `up` left them running: the next `up` then found the broker's
port taken and a second copy of every instance beside the first. Two guards:

- `die_with_parent` (Linux): each child asks the kernel for a SIGTERM when `up` dies
  (PR_SET_PDEATHSIG), so it stops at once, cleanly (the services publish `stopped`, mosquitto
  saves its persistence);
- `PidFile`: `up` writes the pid and start time of every process it runs to
  `{workdir}/run/pids.json` (atomically); the next `up` on that workdir stops any of them still
  running (SIGTERM, then SIGKILL) before it starts anything. The start time tells a leftover
  from an unrelated process that got the same pid later. This covers systems without
  PR_SET_PDEATHSIG and a child that was being spawned when `up` died.

They are stopped rather than adopted: an adopted process's exit code cannot be waited for by
a process that is not its parent, and a fresh start takes about a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path

import psutil

from shared.files import write_atomic

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """A `preexec_fn`: SIGTERM to this child when the process that spawned it dies."""
    if _libc is None:
        return
    parent = os.getppid()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class PidFile:
    """`{workdir}/run/pids.json`: name → [pid, start time] of each process `up` runs now."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "run" / "pids.json"
        self._pids: dict[str, tuple[int, float]] = {}

    def add(self, name: str, pid: int) -> None:
        try:
            started = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:  # already gone: nothing to reap later
            return
        self._pids[name] = (pid, started)
        self._save()

    def remove(self, name: str) -> None:
        if self._pids.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(self._pids).encode())

    def reap(self, timeout: float = 10.0) -> list[str]:
        """Stop what an earlier `up` on this workdir left running; the names stopped."""
        try:
            found = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        alive: dict[str, psutil.Process] = {}
        for name, entry in found.items() if isinstance(found, dict) else ():
            try:
                pid, started = int(entry[0]), float(entry[1])
                process = psutil.Process(pid)
                if abs(process.create_time() - started) < 0.01 and process.is_running():
                    alive[name] = process
            except (psutil.Error, TypeError, ValueError, IndexError):
                continue  # gone, or a pid now used by another program
        for name, process in alive.items():
            log.warning("up: %s (pid %d) outlived the previous up; stopping it", name, process.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, still = psutil.wait_procs(list(alive.values()), timeout=timeout)
        for process in still:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(still, timeout=timeout)
        self.path.unlink(missing_ok=True)
        return sorted(alive)
