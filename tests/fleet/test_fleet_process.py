"""The fleet service as a real process, driven by the real command line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.broker import LocalBroker
from tests.fleet.conftest import fleet_of
from tests.inference import models

Completed = subprocess.CompletedProcess[str]


class FleetProcess:
    def __init__(self, config: dict[str, Any], tmp_path: Path) -> None:
        self.path = tmp_path / "fleet.yaml"
        self.path.write_text(yaml.safe_dump(config))
        fleet_of(config)  # valid before it is started
        self.log = tmp_path / "fleet.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.cli", "run", "fleet", "--config", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def fleet_process(fleet_config: dict[str, Any], tmp_path: Path) -> Any:
    process = FleetProcess(fleet_config, tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def cli(
    broker: LocalBroker, prefix: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEFLEET_FLEET": f"{broker.host}:{broker.port}"}
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *args, "--prefix", prefix],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def cli_of(broker: LocalBroker, prefix: str) -> Callable[..., Awaitable[Completed]]:
    """The command line against this fleet, run off the event loop (the test's probes and the
    fleet client live on it)."""

    async def arun(*args: str) -> Completed:
        return await asyncio.to_thread(cli, broker, prefix, *args)

    return arun


def wait_ready(broker: LocalBroker, prefix: str) -> None:
    for _ in range(60):
        if cli(broker, prefix, "library", "list", "--timeout", "0.5").returncode == 0:
            return
    raise TimeoutError("the fleet process did not answer")


def test_sigkill_between_commands_loses_nothing_committed(
    fleet_process: FleetProcess, broker: LocalBroker, site: str, tmp_path: Path
) -> None:
    wait_ready(broker, site)
    model = models.isolation_forest(tmp_path / "m.onnx")
    pushed = cli(
        broker, site, "library", "push", str(model), "--name", "pump-ae", "--note", "n1", "--json"
    )
    assert pushed.returncode == 0, pushed.stderr
    ref = json.loads(pushed.stdout)["resource"]["ref"]
    flow = tmp_path / "f.yaml"
    flow.write_text(
        "name: pump-anomaly\nalign:\n  period_ms: 100\n  max_delay_ms: 100\n  features:\n"
        + "".join(
            f"    - {{signal: plc1/{f}, fill: hold, max_age_ms: 500, name: {f}}}\n"
            for f in models.FEATURES
        )
        + "model: {ref: pump-ae}\n"
    )
    assert cli(broker, site, "flow", "push", str(flow)).returncode == 0

    fleet_process.kill()
    fleet_process.start()
    wait_ready(broker, site)

    shown = json.loads(cli(broker, site, "library", "show", ref, "--json").stdout)
    assert shown["resource"]["note"] == "n1"
    history = json.loads(cli(broker, site, "flow", "history", "pump-anomaly", "--json").stdout)
    assert [v["model"] for v in history["versions"]] == ["pump-ae@1"]
    out = tmp_path / "back.onnx"
    pulled = cli(broker, site, "library", "pull", ref, "-o", str(out))
    assert pulled.returncode == 0 and out.read_bytes() == model.read_bytes()
    # numbering goes on after the restart
    again = cli(
        broker, site, "library", "push", str(models.mlp(tmp_path / "b.onnx")), "--name", "pump-ae"
    )
    assert "pump-ae@2" in again.stdout


def test_cli_tables_json_and_exit_codes(
    fleet_process: FleetProcess, broker: LocalBroker, site: str, tmp_path: Path
) -> None:
    wait_ready(broker, site)
    model = models.mlp(tmp_path / "scorer.onnx")
    pushed = cli(broker, site, "library", "push", str(model), "--name", "scorer")
    assert pushed.returncode == 0 and pushed.stdout.startswith("pushed scorer@1  model")
    table = cli(broker, site, "library", "list")
    header = table.stdout.splitlines()[0].split()
    assert header == ["NAME", "LATEST", "VERSIONS", "KIND", "SIZE", "CREATED", "DEPLOYED"]
    assert table.stdout.splitlines()[1].split()[:4] == ["scorer", "1", "1", "model"]
    listed = json.loads(cli(broker, site, "library", "list", "--json").stdout)
    assert [r["name"] for r in listed["resources"]] == ["scorer"]
    shown = cli(broker, site, "library", "show", "scorer")
    assert "sha256:" in shown.stdout and "input" in shown.stdout

    # the operation failed: 1, with what to do next on stderr
    missing = cli(broker, site, "library", "show", "nothing@3")
    assert missing.returncode == 1 and "edgefleet library show nothing" in missing.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    refused = cli(broker, site, "library", "push", str(bad), "--name", "bad")
    assert refused.returncode == 1 and "not a valid ONNX model" in refused.stderr
    # bad usage: 2
    assert (
        cli(broker, site, "library", "push", str(tmp_path / "none.onnx"), "--name", "x").returncode
        == 2
    )
    assert cli(broker, site, "library", "push", str(model)).returncode == 2  # no --name
    odd = tmp_path / "model.bin"
    odd.write_bytes(model.read_bytes())
    assert cli(broker, site, "library", "push", str(odd), "--name", "x").returncode == 2
    # no fleet there: 3, naming the address and how to give another
    env_less = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "library", "list", "--fleet", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert env_less.returncode == 3 and "--fleet" in env_less.stderr
