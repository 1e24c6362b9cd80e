"""The side by side rendering of a unified diff, and who may call which command."""

from __future__ import annotations

import difflib

import pytest

from edgefleet.console.backend import READ_ONLY, Forbidden, authorize
from edgefleet.console.users import Role, User
from edgefleet.console.views import side_by_side
from edgefleet.fleet.commands import COMMANDS
from edgefleet.fleet.errors import FleetError


def test_side_by_side_pairs_changed_lines_and_keeps_numbers() -> None:
    old = ["name: pump", "align:", "  period_ms: 100", "  max_delay_ms: 200", "model: a"]
    new = ["name: pump", "align:", "  period_ms: 100", "  max_delay_ms: 300", "model: a", "x: 1"]
    unified = "\n".join(difflib.unified_diff(old, new, "a", "b", lineterm=""))
    rows = side_by_side(unified)
    changed = [r for r in rows if r.kind == "changed"]
    assert [(r.left_no, r.left, r.right_no, r.right) for r in changed] == [
        (4, "  max_delay_ms: 200", 4, "  max_delay_ms: 300")
    ]
    (added,) = [r for r in rows if r.kind == "added"]
    assert added.right == "x: 1" and added.right_no == 6 and added.left_no is None
    assert side_by_side("") == []


def test_a_viewer_reads_and_an_operator_changes_as_themselves() -> None:
    viewer, operator = User("olga", Role.VIEWER), User("ana", Role.OPERATOR)
    assert authorize(viewer, "deployment.list", {}) == {}
    changing = sorted(set(COMMANDS) - READ_ONLY - {"library.upload_url", "library.commit"})
    # a staged rollout's pause and resume are changes: operators only, like deploy
    assert {"deployment.pause", "deployment.resume"} <= set(changing)
    assert authorize(operator, "deployment.pause", {"id": "x"}) == {"id": "x"}
    for cmd in changing:
        if cmd == "library.download_url":
            continue
        with pytest.raises(Forbidden):
            authorize(viewer, cmd, {})
    sent = authorize(operator, "deploy", {"flows": ["pump@2"], "author": "someone else"})
    assert sent["author"] == "ana@console"  # the page cannot claim another author
    # cancel and archive are recorded with who did them too
    assert authorize(operator, "deployment.cancel", {"id": "x"})["author"] == "ana@console"
    assert authorize(operator, "library.archive", {"ref": "m@1"})["author"] == "ana@console"
    with pytest.raises(FleetError):
        authorize(operator, "library.upload_url", {})  # blob transfers are the CLI's
