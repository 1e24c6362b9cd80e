"""SIGKILL of `edgefleet up` while its agent applies a revision, then a restart.

The site is a real `edgefleet up` (its own mosquitto bridged to the test's broker, where the
fleet service and the S3 server's proxy run); the test plays the fleet's deploy with signed
retained desired states. A proxy in front of the S3 server holds the download in its middle,
so the SIGKILL lands while the blob is half written. After the kill, no process of the killed
`up` may be left (the old broker would hold the port, old instances would run beside the new
ones); after the restart the node ends with the new revision applied, from a whole blob.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient
from edgefleet.locals3 import LocalS3
from edgefleet.site.orphans import PidFile
from shared.topics import Topics
from tests.agent.sites import HoldingProxy, Site
from tests.agent.test_agent import KEY, deploy, desired, push
from tests.helpers import Probe, until

TIMEOUT = 90


@pytest.fixture
async def proxy(s3: LocalS3) -> AsyncIterator[HoldingProxy]:
    async with HoldingProxy(int(s3.endpoint.rsplit(":", 1)[1])) as p:
        yield p


@pytest.fixture
def fleet_config(fleet_config: dict[str, Any], proxy: HoldingProxy) -> dict[str, Any]:
    """Presigned URLs name the proxy, so the test can hold a download."""
    s3 = {**fleet_config["s3"], "public_endpoint": f"127.0.0.1:{proxy.port}"}
    return {**fleet_config, "s3": s3}


@pytest.fixture
def node(tmp_path: Path, site: str, broker: LocalBroker, simulator: int) -> Iterator[Site]:
    node = Site(tmp_path / "site", site, simulator, {"role": "pump"}, KEY.public,
                prefix=site, fleet_port=broker.port, health_timeout_s=30)  # fmt: skip
    try:
        yield node
    finally:
        node.stop()


def children(node: Site) -> list[psutil.Process]:
    assert node.process is not None
    found: list[psutil.Process] = psutil.Process(node.process.pid).children(recursive=True)
    return found


def kill_and_check_nothing_outlives(node: Site) -> None:
    """SIGKILL `up` only; every process it ran stops by itself (none is our child any more)."""
    left = children(node)
    assert any("mosquitto" in describe(p) for p in left) and len(left) >= 4, left
    node.kill()
    alive = [p for p in left if running(p)]
    # each service ends within seconds of its PDEATHSIG SIGTERM, whatever its dying broker
    # does (tests/modbus/test_modbus_stop.py); mosquitto saves its persistence first
    deadline = time.monotonic() + 15
    while alive and time.monotonic() < deadline:  # no event for another process' exit: polled
        psutil.wait_procs(alive, timeout=0.2)
        alive = [p for p in alive if running(p)]
    described = [describe(p) for p in alive]
    for process in alive:
        process.kill()
    assert not alive, f"outlived the SIGKILLed up: {described}"


def running(process: psutil.Process) -> bool:
    """Not yet exited. A zombie has exited: its parent died with `up` and whoever inherits it
    (here the sandbox's PID 1, which does not reap) only keeps its entry."""
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def describe(process: psutil.Process) -> str:
    """Its command line; a child that just exited (a zombie until reaped) has none to show."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error as exc:
        return f"pid {process.pid}: {exc}"


async def reported(probe: Probe, site: str, revision: int, state: str) -> None:
    await probe.wait_for(
        Topics(site, site).reported(),
        lambda r: r["revision"] == revision and r["state"] == state,
        timeout=TIMEOUT,
    )


async def results_on_site(node: Site, sha256: str) -> None:
    async with Probe("127.0.0.1", node.port) as probe:
        await probe.subscribe(Topics(node.site, node.prefix).results("pump"))
        await probe.wait_for(
            Topics(node.site, node.prefix).results("pump"),
            lambda r: r["model"]["sha256"] == sha256,
            timeout=TIMEOUT,
        )


def state(node: Site) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((node.workdir / "agent" / "state.json").read_text())
    return data


async def test_sigkill_mid_download_resumes_with_a_whole_blob(
    tmp_path: Path, broker: LocalBroker, fleet: FleetClient, proxy: HoldingProxy, site: str,
    node: Site,
) -> None:  # fmt: skip
    first = await push(fleet, tmp_path, "pump-ae", seed=2)
    second = await push(fleet, tmp_path, "pump-ae", seed=7)
    new_sha = second["pins"]["model"]["sha256"]
    cache = node.workdir / "agent" / "cache" / "sha256"
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(Topics(site, site).everything())
        node.start()
        await deploy(probe, site, desired(site, 1, first), tmp_path)
        await reported(probe, site, 1, "applied")

        proxy.hold = True
        await deploy(probe, site, desired(site, 2, second), tmp_path)
        await reported(probe, site, 2, "downloading")
        await proxy.held.wait()
        await until(lambda: any(cache.glob(".*.part")), timeout=TIMEOUT)
        assert state(node)["pending"]["step"] == "downloading"
        kill_and_check_nothing_outlives(node)
        assert list(cache.glob(".*.part")) and not (cache / new_sha).exists()

        proxy.hold = False
        proxy.release.set()
        node.start()
        await reported(probe, site, 2, "applied")
        await results_on_site(node, new_sha)
    assert not list(cache.glob(".*.part"))
    assert hashlib.sha256((cache / new_sha).read_bytes()).hexdigest() == new_sha
    after = state(node)
    assert after["current"]["revision"] == 2 and after["last_good"]["revision"] == 1
    assert after["pending"] is None


async def test_sigkill_mid_activation_ends_in_the_new_revision(
    tmp_path: Path, broker: LocalBroker, fleet: FleetClient, site: str, node: Site
) -> None:
    view = await push(fleet, tmp_path, "pump-ae", seed=2)
    sha = view["pins"]["model"]["sha256"]
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(Topics(site, site).everything())
        node.start()
        # revision 1 runs no flow; revision 2 starts the flow's aligner and inference
        await deploy(probe, site, desired(site, 1), tmp_path)
        await reported(probe, site, 1, "applied")
        await deploy(probe, site, desired(site, 2, view), tmp_path)
        await reported(probe, site, 2, "activating")
        assert state(node)["pending"]["step"] == "activating"
        await until(lambda: any("inference" in describe(p) for p in children(node)))
        kill_and_check_nothing_outlives(node)

        node.start()
        await reported(probe, site, 2, "applied")
        await results_on_site(node, sha)
        # one inference instance: the new `up`'s, none left from the killed one
        running = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(node.workdir / "config" / "inference-pump.yaml") in (p.info["cmdline"] or [])
        ]
        assert len(running) == 1, running
    after = state(node)
    assert after["current"]["revision"] == 2 and after["pending"] is None


def test_the_next_up_stops_what_a_killed_one_left(tmp_path: Path) -> None:
    """Where PR_SET_PDEATHSIG is not there: the pid file names what is left, by start time."""
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        pids = PidFile(tmp_path)
        pids.add("inference-pump", left.pid)
        pids.add("modbus-plc1", other.pid)
        # a pid recorded with another start time is another program now: not touched
        data = json.loads(pids.path.read_text())
        data["modbus-plc1"][1] -= 100
        pids.path.write_text(json.dumps(data))
        assert PidFile(tmp_path).reap(timeout=10) == ["inference-pump"]
        assert not psutil.pid_exists(left.pid) and other.poll() is None
        assert not pids.path.exists()
    finally:
        for p in (left, other):
            p.kill()
            p.wait()
