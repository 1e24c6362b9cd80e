"""One table of exit codes for every command (edgefleet/cli_errors.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet import cli_errors
from edgefleet.broker import LocalBroker
from edgefleet.cli_errors import Failed, UsageError
from edgefleet.cli_errors import cli_errors as handled
from edgefleet.fleet.errors import FleetError, FleetUnreachable
from shared.errors import ConfigError, EdgefleetError, ModelError, ProtocolError, Refused
from shared.mqtt import NotConnected
from shared.requests import RequestTimeout

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


def edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEFLEET, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (Failed("nothing matched"), 1, "prog: nothing matched"),
        (Refused("no such point"), 1, "prog: no such point"),
        (FleetError("not_found", "no resource x@3"), 1, "prog: no resource x@3 [not_found]"),
        (UsageError("give --a or --b"), 2, "prog: give --a or --b"),
        (ConfigError("site.yaml: key x"), 2, "prog: site.yaml: key x"),
        (ModelError("takes 3 features"), 2, "prog: takes 3 features"),
        (NotConnected("refused"), 3, "prog: refused"),
        (RequestTimeout("no answer"), 3, "prog: no answer"),
        (ProtocolError("bad user name or password"), 3, "prog: bad user name or password"),
        (FleetUnreachable("cannot reach the fleet"), 3, "prog: cannot reach the fleet"),
    ],
)
def test_each_error_class_has_its_code_and_one_line(
    error: EdgefleetError, code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    @handled("prog")
    def main() -> int:
        raise error

    assert main() == code
    assert capsys.readouterr().err == line + "\n"


def test_a_task_group_of_errors_takes_the_worst_code(capsys: pytest.CaptureFixture[str]) -> None:
    @handled("prog")
    def main() -> int:
        inner = ExceptionGroup("inner", [NotConnected("gone")])
        raise ExceptionGroup("outer", [ConfigError("bad key"), inner])

    assert main() == cli_errors.UNREACHABLE
    assert capsys.readouterr().err.splitlines() == ["prog: bad key", "prog: gone"]


def test_success_interrupt_and_bugs(capsys: pytest.CaptureFixture[str]) -> None:
    assert handled("prog")(lambda: 0)() == cli_errors.OK

    @handled("prog")
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert interrupted() == cli_errors.INTERRUPTED

    @handled("prog")
    def bug() -> int:
        raise ZeroDivisionError  # not raised on purpose: keeps its traceback

    with pytest.raises(ZeroDivisionError):
        bug()


def test_commands_exit_with_the_table(tmp_path: Path, broker: LocalBroker) -> None:
    key = tmp_path / "fleet.key"
    assert edgefleet("keys", "create", "--out", str(key)).returncode == cli_errors.OK
    exists = edgefleet("keys", "create", "--out", str(key))
    assert exists.returncode == cli_errors.USAGE and "never overwritten" in exists.stderr
    nothing = edgefleet(
        "forwarder", "dead-letters", "drop", "--queue-dir", str(tmp_path / "q"), "--all"
    )
    assert nothing.returncode == cli_errors.FAILED, nothing.stderr
    # a broker without a fleet service behind it, and no broker at all: both 3
    silent = edgefleet(
        "keys", "status", "--fleet", f"{broker.host}:{broker.port}", "--timeout", "1"
    )
    assert silent.returncode == cli_errors.UNREACHABLE and "did not answer" in silent.stderr
    closed = edgefleet("deployment", "list", "--fleet", "127.0.0.1:1", "--timeout", "1")
    assert closed.returncode == cli_errors.UNREACHABLE and "cannot reach" in closed.stderr
    actuator = edgefleet(
        "actuator", "release", "--site", "s", "--instance", "a", "--action", "x",
        "--port", str(broker.port), "--timeout", "1",
    )  # fmt: skip
    assert actuator.returncode == cli_errors.UNREACHABLE and "no answer" in actuator.stderr
