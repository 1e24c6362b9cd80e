"""A server run as a child process for one machine without containers (a local mosquitto, a
local S3): stop, kill, restart and `with`, in one place."""

from __future__ import annotations

import subprocess
from typing import Self


class LocalProcess:
    """Subclasses set `self.process` in `start()` and return `self`."""

    process: subprocess.Popen[bytes] | None = None
    stop_grace_s = 5.0

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_grace_s`."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Die without saving, as a crash or a power cut would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
