"""State files that are never half written: a temporary name, fsync, rename, fsync the folder.

A power cut or SIGKILL at any moment leaves either the old file or the new one, never a mix
(rename is atomic on POSIX file systems; the folder's fsync makes the rename itself durable).
A process killed between the write and the rename leaves its temporary `.{name}.{pid}.tmp`;
`remove_stale_temporaries` removes those at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)" + re.escape(TMP_SUFFIX) + "$")
# psutil derives a start time from the boot time, which /proc gives in whole seconds
START_SLACK_S = 2.0


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` durably; the folder is created when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writer_alive(pid: int, written: float) -> bool:
    """Whether the process `pid` may still be writing a temporary last modified at `written`
    (epoch seconds): it runs, and it started before that (a PID reused by a process started
    later, as after a reboot or in a container where every service is PID 1, is not the
    writer)."""
    try:
        started: float = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False  # gone, or exited and not yet reaped: it writes nothing any more
    except psutil.Error:
        return True  # cannot tell (no access): keep the file
    return started <= written + START_SLACK_S


def remove_stale_temporaries(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Remove the temporaries `write_atomic` left in `folder` (and below, with `recursive`)
    whose writer is gone; the paths removed. A temporary of a writer still running is kept:
    it may be renamed any moment (another process sharing the folder)."""
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*" + TMP_SUFFIX) if recursive else folder.glob(".*" + TMP_SUFFIX):
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            written = path.stat().st_mtime
        except FileNotFoundError:
            continue  # renamed or removed meanwhile
        if writer_alive(int(match["pid"]), written):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
            log.info("removed %s: a write cut short (its process %s is gone)", path, match["pid"])
    return removed
