"""`edgefleet up` against the real simulator and a real mosquitto: the site comes online, a
service killed with SIGKILL comes back, and a stop leaves nothing running."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from edgefleet.broker import LocalBroker, free_port
from edgefleet.site.supervisor import SiteSupervisor, StatusChange, run_site
from tests.helpers import Probe
from tests.inference.models import mlp
from tests.shared.test_files import cut_write
from tests.site.helpers import FEATURES, flow_data, site_data, write_site

ROOT = Path(__file__).resolve().parents[2]
INSTANCES = ["modbus-plc1", "aligner-pump", "inference-pump"]


async def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Every process of `pids` has ended (they may not be our children: `up` started them)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = await asyncio.to_thread(psutil.wait_procs, procs, timeout)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive


async def test_up_runs_the_site_restarts_a_killed_service_and_stops_cleanly(
    tmp_path: Path, broker: LocalBroker, probe: Probe, site: str, simulator: int
) -> None:
    (tmp_path / "flows").mkdir()
    mlp(tmp_path / "flows" / "pump.onnx", f=len(FEATURES))
    path = write_site(tmp_path, site_data(site, broker.port, simulator), flow_data())
    await probe.subscribe(f"ef/{site}/status/+")
    await probe.subscribe(f"ef/{site}/results/pump")
    out = (tmp_path / "up.out").open("wb")
    up = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "edgefleet.cli", "up", str(path), "--workdir", str(tmp_path / "w")],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    pids: list[int] = []
    try:
        for name in INSTANCES:
            status = await probe.wait_for(
                f"ef/{site}/status/{name}", lambda s: s["state"] == "online", timeout=30
            )
            pids.append(status[0]["health"]["pid"])
        await probe.wait_for(f"ef/{site}/results/pump", timeout=20)  # data flows end to end

        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        back = await probe.wait_for(
            f"ef/{site}/status/modbus-plc1",
            lambda s: s["state"] == "online" and s["health"]["pid"] != victim,
            timeout=30,
        )
        pids.append(back[0]["health"]["pid"])
        before = len(probe.received(f"ef/{site}/results/pump"))
        await probe.wait_for(f"ef/{site}/results/pump", count=before + 5, timeout=20)

        up.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.wait(), 30) == 0
        await wait_gone(pids)
        for name in INSTANCES:  # each said goodbye: `stopped`, not the last will
            await probe.wait_for(
                f"ef/{site}/status/{name}", lambda s: s["state"] == "stopped", timeout=10
            )
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
        out.close()
        for pid in pids:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)
    text = (tmp_path / "up.out").read_text()
    assert "modbus-plc1" in text and "online" in text
    assert "exited" in text and "signal 9" in text and "restart 1" in text
    assert "every instance stopped" in text


async def test_run_site_api_with_a_local_broker(tmp_path: Path, site: str, simulator: int) -> None:
    port = free_port()
    data = site_data(site, port, simulator)
    data["broker"]["start_local"] = True
    path = write_site(tmp_path, data, flow_data(model=None))
    changes: list[StatusChange] = []
    stop = asyncio.Event()
    # a config write and a pid file write of an earlier `up`, SIGKILLed before their renames
    left = [cut_write(tmp_path / "w" / "config" / "modbus-plc1.yaml")]
    left.append(cut_write(tmp_path / "w" / "run" / "pids.json"))
    supervisor = SiteSupervisor(path, tmp_path / "w", on_status=changes.append)
    async with supervisor:
        assert not any(p.exists() for p in left)  # removed at start
        assert supervisor.broker is not None and supervisor.broker.running
        await supervisor.wait_online(timeout=30)
        states = {n: (s.state, s.restarts) for n, s in supervisor.instances.items()}
        assert states == {"modbus-plc1": ("online", 0), "aligner-pump": ("online", 0)}
        pids = [s.pid for s in supervisor.instances.values() if s.pid]
        assert (tmp_path / "w" / "config" / "modbus-plc1.yaml").exists()
    assert supervisor.broker is None
    await wait_gone(pids)
    assert any(c.instance == "aligner-pump" and c.state == "online" for c in changes)
    assert any(c.instance == "broker" and c.state == "stopped" for c in changes)

    # run_site: the same through one call that returns when `stop` is set
    stop.set()
    done = await run_site(path, tmp_path / "w", stop)
    assert all(s.pid is None for s in done.instances.values())


async def test_the_forwarder_is_online_before_any_flow_instance_starts(
    tmp_path: Path, broker: LocalBroker, site: str, simulator: int
) -> None:
    # results published before the forwarder's persistent session exists go nowhere: on a
    # fresh site the first results were lost while every instance started at once
    (tmp_path / "flows").mkdir()
    mlp(tmp_path / "flows" / "pump.onnx", f=len(FEATURES))
    data = site_data(site, broker.port, simulator, forwarder={"queue_dir": str(tmp_path / "q")})
    path = write_site(tmp_path, data, flow_data(sinks=[{"kind": "sqlite", "path": "h.db"}]))
    changes: list[StatusChange] = []
    async with SiteSupervisor(path, tmp_path / "w", on_status=changes.append) as sup:
        await sup.wait_online(timeout=60)
    states = [(c.instance, c.state) for c in changes]
    online = states.index(("forwarder", "online"))
    assert all((name, "starting") in states[online:] for name in INSTANCES), states
