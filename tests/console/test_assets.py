"""The pinned uPlot: its integrity is checked, and a console without it says so on the page."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from edgefleet.console import assets


def test_integrity_is_checked() -> None:
    data = b"uPlot bytes"
    good = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    assets.check_integrity(data, good)
    with pytest.raises(ValueError, match="integrity mismatch"):
        assets.check_integrity(data + b"!", good)
    with pytest.raises(ValueError, match="unsupported"):
        assets.check_integrity(data, "sha1-abc")


def test_the_pin_names_an_npm_tarball_and_the_installed_files_match_it() -> None:
    pin = assets.pin()
    assert pin["resolved"].startswith("https://registry.npmjs.org/uplot/-/uplot-")
    assert pin["integrity"].startswith("sha512-")
    assert assets.status().ok, assets.status().message  # scripts/bootstrap fetched it


def test_missing_files_are_reported_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assets, "VENDOR", tmp_path)
    status = assets.status()
    assert not status.ok
    assert "scripts/bootstrap" in status.message and "cannot draw" in status.message
    assert assets.file("uPlot.iife.min.js") is None
    assert assets.file("../../users.db") is None  # only the pinned names are served
