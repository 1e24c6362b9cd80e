"""`edgefleet up` as a user runs it, with its screen read line by line as it prints."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\d\d:\d\d:\d\d  (\S+)\s+(\S+)\s*(.*)$")  # StatusChange.line()


class UpProcess:
    """Start `edgefleet up SITE --workdir W`; `wait_line` waits for a state line on its screen."""

    def __init__(self, site_file: Path, workdir: Path, screen: Path) -> None:
        self.args = [sys.executable, "-m", "edgefleet.cli", "up", str(site_file)]
        self.args += ["--workdir", str(workdir)]
        self.screen = screen
        self.lines: list[str] = []
        self._arrived = asyncio.Condition()
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self.process = await asyncio.create_subprocess_exec(
            *self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None and self._reader is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await asyncio.wait_for(self._reader, 10)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.screen.open("w") as out:
            async for raw in self.process.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                out.write(line + "\n")
                out.flush()
                async with self._arrived:
                    self.lines.append(line)
                    self._arrived.notify_all()

    def states(self, start: int = 0) -> list[tuple[int, str, str, str]]:
        """(index, instance, state, detail) of every state line from line `start` on."""
        out = []
        for i, line in enumerate(self.lines[start:], start):
            m = LINE.match(line)
            if m:
                out.append((i, m[1], m[2], m[3]))
        return out

    async def wait_state(
        self,
        instance: str,
        state: str,
        start: int = 0,
        detail: Callable[[str], bool] = lambda _: True,
        timeout: float = 30.0,
    ) -> tuple[int, str]:
        """The first line from `start` on saying `instance` is in `state`: (index, detail)."""

        def found() -> tuple[int, str] | None:
            for i, name, st, d in self.states(start):
                if name == instance and st == state and detail(d):
                    return i, d
            return None

        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: found() is not None)
        result = found()
        assert result is not None
        return result

    async def stop(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout)

    def text(self) -> str:
        return "\n".join(self.lines)
