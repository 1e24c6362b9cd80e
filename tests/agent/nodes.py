"""Nodes of a fleet in this process: each a site under its supervisor (with its agent) on the
test's broker, started and stopped at will; and the fleet's view of a deployment. Shared by the
rollout tests and the fault suite's bad-deployment rows."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient
from edgefleet.site.load import load_site
from edgefleet.site.supervisor import SiteSupervisor
from shared.signing import PublicKey, SigningKey
from tests.fleet.test_deploy import eventually
from tests.site.helpers import site_data

DEPLOY_WAIT_S = 120.0  # a staged deployment waits on several nodes, each up to a minute


def write_node(
    root: Path,
    node: str,
    prefix: str,
    broker: LocalBroker,
    modbus: int,
    key: SigningKey | PublicKey,
    health_timeout_s: float = 8,
    **fleet: Any,
) -> Path:
    """A node's site.yaml under `root`: one Modbus source (the simulator), no flow of its own
    (the fleet deploys them), trusting `key`; `fleet` keys override its fleet section."""
    public = key.public if isinstance(key, SigningKey) else key
    data = site_data(node, broker.port, modbus, prefix=prefix, labels={"role": "pump"})
    data["flows"] = []
    data["timings"]["error_report_interval_s"] = 0.1
    data["fleet"] = {
        "trusted_keys": [public.text()],
        "health_timeout_s": health_timeout_s,
        "inspect_timeout_s": 60,  # the default 30 s ran out in a cold process under load
        **fleet,
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_nodes(
    tmp_path: Path,
    nodes: Iterable[str],
    prefix: str,
    broker: LocalBroker,
    modbus: int,
    key: SigningKey,
    **fleet: Any,
) -> dict[str, Path]:
    """Several nodes under one prefix (tmp_path / NODE / site.yaml), as a staged rollout needs."""
    return {n: write_node(tmp_path / n, n, prefix, broker, modbus, key, **fleet) for n in nodes}


class Node:
    """One site (`write_node`) whose supervisor runs between `start()` and `stop()`, as often
    as asked; its work folder (agent state, cache, deployed revisions) stays across."""

    def __init__(self, root: Path, name: str, path: Path) -> None:
        self.name, self.path, self.work = name, path, root / "w" / name
        self.sup: SiteSupervisor | None = None
        self.cut_short = 0  # stops that came while the agent was applying a revision

    async def start(self) -> SiteSupervisor:
        assert self.sup is None, f"{self.name} runs already"
        sup = SiteSupervisor(load_site(self.path), self.work)
        await sup.__aenter__()
        self.sup = sup
        return sup

    async def stop(self) -> None:
        if self.sup is not None:
            sup, self.sup = self.sup, None
            self.cut_short += sup.agent is not None and sup.agent.step != "idle"
            await sup.__aexit__(None, None, None)

    @property
    def running(self) -> bool:
        return self.sup is not None

    def state(self) -> dict[str, Any]:
        """The agent's state file."""
        data: dict[str, Any] = json.loads((self.work / "agent" / "state.json").read_text())
        return data

    def blobs(self, which: str) -> set[str]:
        """sha256 of the blobs of the agent's `current` or `last_good` revision."""
        revision = self.state()[which]
        if revision is None:
            return set()
        return {r["sha256"] for f in revision["desired"]["flows"] for r in f["resources"]}

    def blob(self, sha256: str) -> Path:
        return self.work / "agent" / "cache" / "sha256" / sha256

    def deployed(self) -> set[int]:
        """Revisions whose flow files are on disk (taken past verifying and not pruned: the
        agent keeps current, last good and pending)."""
        folder = self.work / "deployed"
        return {int(p.name) for p in folder.iterdir()} if folder.is_dir() else set()


async def shown_when(
    fleet: FleetClient, dep: str, check: Any, timeout: float = DEPLOY_WAIT_S
) -> dict[str, Any]:
    shown: dict[str, Any] = {}

    async def ok() -> bool:
        nonlocal shown
        shown = await fleet.call("deployment.show", {"id": dep})
        return bool(check(shown))

    await eventually(ok, timeout=timeout)
    return shown


def states(shown: dict[str, Any]) -> dict[str, str]:
    return {n["site"]: n["state"] for n in shown["nodes"]}
