"""`edgefleet keys`: as a user runs it, through the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shared.signing import PublicKey, SigningKey

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli", "keys"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEFLEET, *args], capture_output=True, text=True, timeout=60)


def test_create_then_show(tmp_path: Path) -> None:
    key = tmp_path / "fleet.key"
    created = run("create", "--out", str(key), "--json")
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert PublicKey.parse(made["public_key"]) == SigningKey.load(key).public
    shown = run("show", str(key))
    assert shown.returncode == 0 and made["key_id"] in shown.stdout
    again = run("create", "--out", str(key))
    assert again.returncode == 2 and "never overwritten" in again.stderr
    missing = run("show", str(tmp_path / "nope.key"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
