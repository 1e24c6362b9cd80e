"""Power cut: a whole site (`edgefleet up` and everything it started: mosquitto, the agent, the
Modbus adapter, aligner, inference, its warm trial process, the forwarder) stopped at once at a
random moment, half the time while the agent applies a new desired state (downloading,
verifying, activating, health gate), then started again, 100 times. Figures: corrupt state
files (goal 0), the revision the site comes back on (the new one, never half of one), and the
time from power back to the first result of the model that revision names.

A SIGKILL of every process is a power cut for the processes, not for the disk: what the page
cache held still reaches the disk here. The writes that must survive a real cut fsync before
they count (shared/files.py, the blob cache, SQLite's own journal); this scenario checks that
no moment of the processes' work leaves a file half written or a state half applied.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import json
import random
import signal
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from edgefleet.agent.state import AgentState, StateFile
from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient
from edgefleet.flow import FlowSpec
from faults.conftest import Figure, scaled
from shared.config import validate
from shared.topics import Topics
from tests.agent.sites import Site
from tests.agent.test_agent import KEY, deploy, desired, reported
from tests.fleet.conftest import bucket, fleet, fleet_config, s3, shared_s3
from tests.helpers import Probe, until
from tests.inference.models import mlp
from tests.site.helpers import FEATURES, flow_data
from tests.site.test_broker_restart import Results, queued_sample_times

__all__ = ["bucket", "fleet", "fleet_config", "s3", "shared_s3"]  # the fleet's fixtures, here

TIMEOUT = 120
CUTS = scaled(100, least=2)
# Two flow versions, each with its own model and alignment period: every new revision swaps
# the model and restarts the aligner, so activation starts and stops processes.
VERSIONS = ((2, 100), (7, 200))
# where in a deployment a cut lands: the agent's step (state.json) it waits for, then a delay
STEPS = ("received", "downloading", "verifying", "activating")


async def push(
    fleet: FleetClient, tmp: Path, seed: int, period_ms: int, history: Path
) -> dict[str, Any]:
    """A model version and a flow `pump` that uses it and keeps a SQLite history."""
    model = mlp(tmp / f"pump-{seed}.onnx", f=len(FEATURES), seed=seed)
    ref = (await fleet.push(model, "pump-pc", "model"))["resource"]["ref"]
    flow = flow_data(model=None, sinks=[{"kind": "sqlite", "path": str(history)}])
    flow["align"]["period_ms"] = period_ms
    flow["model"] = {"ref": ref}
    pushed = await fleet.call(
        "flow.push", {"text": yaml.safe_dump(flow, sort_keys=False), "filename": "pump.yaml"}
    )
    view: dict[str, Any] = pushed["flow"]
    return view


def everything(node: Site) -> list[psutil.Process]:
    """`up` and every process under it, each stopped (SIGSTOP) where it stands, until no new
    one appears: then none of them sees another die before it dies itself."""
    assert node.process is not None
    found: dict[int, psutil.Process] = {}
    todo = [psutil.Process(node.process.pid)]
    while todo:
        for p in todo:
            try:
                p.send_signal(signal.SIGSTOP)
                found[p.pid] = p
            except psutil.NoSuchProcess:
                continue
        todo = []
        for p in list(found.values()):
            try:
                todo += [c for c in p.children(recursive=True) if c.pid not in found]
            except psutil.NoSuchProcess:
                continue
    return list(found.values())


def power_cut(node: Site) -> int:
    """SIGKILL every process of the site at once; how many there were."""
    assert node.process is not None
    processes = everything(node)
    for p in processes:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    node.process.wait()
    node.process = None
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, [p.pid for p in alive]
    return len(processes)


def corrupt_files(workdir: Path, history: Path) -> tuple[list[str], int, int]:
    """Every state file the site keeps, read as its owner reads it: (what is corrupt, files
    checked, temporary files left by a write the cut interrupted)."""
    bad: list[str] = []
    checked = 0
    try:
        StateFile(workdir / "agent" / "state.json").load()
        checked += 1
    except Exception as exc:
        bad.append(f"agent state: {exc}")
    for path in sorted(workdir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_bytes())
            elif path.suffix == ".yaml":
                data = yaml.safe_load(path.read_bytes())
                if path.parent.parent.name == "deployed":  # a revision's flow file
                    validate(FlowSpec, data, str(path))
            elif path.suffix == ".db" and path.name != "mosquitto.db":
                check_sqlite(path)
            elif path.parent.name == "sha256":  # a blob in the agent's cache: named by its hash
                if hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
                    raise ValueError("its sha256 is not its name")
            else:
                continue
            checked += 1
        except Exception as exc:
            bad.append(f"{path.relative_to(workdir)}: {exc}")
    if history.exists():
        try:
            check_sqlite(history)
            checked += 1
        except Exception as exc:
            bad.append(f"history: {exc}")
    left = [p for p in workdir.rglob(".*") if p.suffix in (".tmp", ".part")]
    return bad, checked, len(left)


def check_sqlite(path: Path) -> None:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
    if verdict != "ok":
        raise ValueError(f"integrity_check: {verdict}")


def agent_state(node: Site) -> AgentState:
    return StateFile(node.workdir / "agent" / "state.json").load()


def at_step(node: Site, revision: int, step: str) -> bool:
    """The agent is at `step` of `revision`, or past it (the revision runs)."""
    state = agent_state(node)
    if state.pending is not None and state.pending.target.revision == revision:
        return STEPS.index(state.pending.step) >= STEPS.index(step)
    return state.current is not None and state.current.revision == revision


def history_times(history: Path) -> set[int]:
    with sqlite3.connect(f"file:{history}?mode=ro", uri=True, timeout=30) as db:
        return {t for (t,) in db.execute("SELECT t FROM results")}


def settled_on(node: Site, revision: int) -> bool:
    state = agent_state(node)
    return (
        state.pending is None and state.current is not None and state.current.revision == revision
    )


async def first_result(node: Site, sha256: str) -> None:
    """The site broker carries a result of the model `sha256`."""
    topic = Topics(node.site, node.prefix).results("pump")
    async with Probe("127.0.0.1", node.port) as probe:
        await probe.subscribe(topic)
        await probe.wait_for(topic, lambda r: r["model"]["sha256"] == sha256, timeout=TIMEOUT)


@pytest.mark.timeout(120 + 60 * CUTS)  # 10-30 s a cut on a loaded machine: past the 300 s
async def test_power_cut_again_and_again(
    tmp_path: Path, broker: LocalBroker, fleet: FleetClient, site: str, simulator: int,
    figure: Figure,
) -> None:  # fmt: skip
    cuts = CUTS
    rng = random.Random(20)
    history = tmp_path / "history.db"
    views = [await push(fleet, tmp_path, seed, ms, history) for seed, ms in VERSIONS]
    shas = [v["pins"]["model"]["sha256"] for v in views]
    node = Site(tmp_path / "site", site, simulator, {"role": "pump"}, KEY.public,
                prefix=site, fleet_port=broker.port, health_timeout_s=30)  # fmt: skip
    data = yaml.safe_load(node.path.read_text())
    data["forwarder"] = {"queue_dir": str(node.workdir / "forwarder")}
    node.path.write_text(yaml.safe_dump(data, sort_keys=False))
    corrupt: list[str] = []
    halves: list[str] = []  # a cut after which the site ran neither revision
    at_cut: collections.Counter[str] = collections.Counter()
    back: list[float] = []  # power back → the first result of the right model
    checked = leftovers = processes = 0
    cut_ns: list[int] = []
    # every result the site broker delivered, to a subscriber of its own (reconnecting after
    # each cut): what of it never reached the history was lost by a cut
    seen = Results(node.port, Topics(site, site).results("pump"))
    await seen.connection.subscribe(seen.topic)
    receiving = asyncio.create_task(seen.connection.run())
    try:
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(Topics(site, site).everything())
            node.start()
            await deploy(probe, site, desired(site, 1, views[0]), tmp_path)
            await reported(probe, site, 1, "applied")
            revision = applied = 1
            for cut in range(cuts):
                if cut % 2 == 0:  # mid-deployment: a new revision, cut somewhere in it
                    revision += 1
                    wire = desired(site, revision, views[(revision - 1) % 2])
                    await deploy(probe, site, wire, tmp_path)
                    step = rng.choice(STEPS)
                    await until(functools.partial(at_step, node, revision, step), TIMEOUT, 0.005)
                    await asyncio.sleep(rng.uniform(0, 0.5))
                else:  # anywhere in steady running (or in the start that came before)
                    await asyncio.sleep(rng.uniform(0, 3))
                cut_ns.append(time.time_ns())
                processes = max(processes, power_cut(node))
                bad, n, left = corrupt_files(node.workdir, history)
                corrupt += [f"cut {cut + 1}: {b}" for b in bad]
                checked, leftovers = checked + n, max(leftovers, left)
                state = agent_state(node)
                at_cut[state.pending.step if state.pending else "steady"] += 1
                running = state.current.revision if state.current else None
                if running not in (applied, revision):
                    halves.append(f"cut {cut + 1}: runs {running}, {applied} or {revision} due")
                node.start()
                powered = time.monotonic()
                await first_result(node, shas[(revision - 1) % 2])
                back.append(time.monotonic() - powered)
                await until(functools.partial(settled_on, node, revision), timeout=TIMEOUT)
                applied = revision
            # the forwarder has sent on what the restarted broker still held for it once a
            # sample taken after power back is in the history
            powered_ns = time.time_ns()
            await until(lambda: max(history_times(history), default=0) > powered_ns, TIMEOUT)
            before = {t for _, ts in seen.sampled for t in ts if t < cut_ns[-1]}
            queue = node.workdir / "forwarder" / "sqlite.db"
            lost = before - history_times(history) - queued_sample_times(queue)
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        node.stop()
    bad, n, left = corrupt_files(node.workdir, history)
    corrupt += [f"at the end: {b}" for b in bad]
    with sqlite3.connect(history) as db:
        rows = db.execute("SELECT count(*) FROM results").fetchone()[0]
    steps = ", ".join(f"{k} {v}" for k, v in sorted(at_cut.items()))
    ok = not corrupt and not halves and len(back) == cuts
    figure(
        "power cut",
        f"the whole site (up and its {processes} processes) SIGKILLed at once ×{cuts} at random "
        f"moments, {revision - 1} of them into a deployment (the agent's step at the cut: "
        f"{steps}); {rows:,} results in the history",
        f"corrupt state files {len(corrupt)} (of {checked:,} read after the cuts: agent state, "
        f"pid and revision files, instance configs, deployed flow files, cached blobs, queue "
        f"and history SQLite files; at most {leftovers} temporary files left by a cut write); "
        f"recovered on the revision due {cuts - len(halves)}/{cuts}, never half of one; first "
        f"result of that revision's model {statistics.median(back):.1f} s after power back "
        f"(p50, max {max(back):.1f} s); results lost per cut {len(lost) / cuts:.1f} ({len(lost)} "
        f"of {len(before):,} the site broker delivered before the last cut)",
        ok,
    )
    assert ok, (corrupt[:5], halves[:5])
