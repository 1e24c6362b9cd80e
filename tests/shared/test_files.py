"""write_atomic: the old content or the new one, never a mix, and no temporary file left;
the temporaries of writes cut short removed at the next start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from shared.files import TMP_SUFFIX, remove_stale_temporaries, write_atomic


def test_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state" / "agent.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["agent.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "agent.json"
    write_atomic(target, b"old")

    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["agent.json"]


def cut_write(target: Path) -> Path:
    """A real process SIGKILLed between write_atomic's write and its rename: its temporary
    (named as write_atomic names it, with the dead process's pid) is left."""
    code = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from shared.files import TMP_SUFFIX\n"
        "t = Path(sys.argv[1])\n"
        "t.parent.mkdir(parents=True, exist_ok=True)\n"
        "tmp = t.with_name(f'.{t.name}.{os.getpid()}{TMP_SUFFIX}')\n"
        "tmp.write_bytes(b'half')\n"
        "print(tmp, flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    tmp = Path(child.stdout.readline().strip())
    assert tmp.exists() and remove_stale_temporaries(target.parent) == []  # its writer runs
    child.kill()
    child.wait(timeout=30)
    child.stdout.close()
    return tmp


def live_write(target: Path) -> Path:
    """A temporary of a writer that runs (this process) and started before it was written."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}{TMP_SUFFIX}")
    tmp.write_bytes(b"in progress")
    return tmp


def test_stale_temporaries_are_removed_and_a_live_writers_kept(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b"old")
    dead = cut_write(target)
    live = live_write(tmp_path / "holds.json")
    # this process's pid, but a file written before it started: a PID reused (a reboot, a
    # container whose every service is PID 1) is not its writer
    reused = tmp_path / f".revisions.json.{os.getpid()}{TMP_SUFFIX}"
    reused.write_bytes(b"old run")
    long_ago = psutil.Process().create_time() - 3600
    os.utime(reused, (long_ago, long_ago))
    others = [tmp_path / ".notes.tmp", tmp_path / ".state.json.12.part", tmp_path / "a.1.tmp"]
    for path in others:
        path.write_bytes(b"not ours")
    nested = cut_write(tmp_path / "deployed" / "3" / "pump.yaml")

    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([dead, reused])
    assert live.exists() and nested.exists() and all(p.exists() for p in others)
    assert remove_stale_temporaries(tmp_path, recursive=True) == [nested]
    assert target.read_bytes() == b"old" and live.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []
