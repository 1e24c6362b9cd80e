"""write_atomic: the old content or the new one, never a mix, and no temporary file left."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.files import write_atomic


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
