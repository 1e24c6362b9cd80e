"""Soak: a compressed day. A whole site under `edgefleet up` (its mosquitto, the simulator's
Modbus server polled every 10 ms, aligner at a 10 ms period, inference, forwarder to a SQLite
history) at ten times the rates of the shipped examples (100 ms) for a bounded time. Figures,
per process `up` records in `run/pids.json` (inference with its warm trial process): RSS, open
file descriptors and disk use at the start (after a warm-up) and at the end, and the growth
over the second half, which a leak shows and warming up does not.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from edgefleet.broker import free_port
from faults.conftest import Figure, scaled
from tests.inference.models import mlp
from tests.site.helpers import FEATURES, flow_data, site_data, write_site
from tests.site.test_broker_restart import INSTANCES
from tests.site.up_process import UpProcess

RATE_MS = 10  # poll and alignment period: 10x the examples' 100 ms
WARM_UP_S = 20  # imports, first allocations, the history's first pages
LOOKS = 8  # snapshots over the soak, for the figure of its second half
# A leak of one small object (~100 bytes) per message at these rates (~100 messages/s through
# a service) grows ~10 kB/s: over even a one-minute half that is past this bound, while what
# the allocator keeps after warming up is not.
RSS_BOUND_MB = 4.0
FD_BOUND = 2  # a file or socket opened per message would be thousands
SOAK_S = scaled(240, least=20)
# The forwarder's queue file holds what waits (drained here: a few rows) and the keys of the
# last `dedupe_window` (100,000) messages, to drop a redelivery: ~53 bytes a key, ~5.3 MB once
# full (about 17 minutes at these rates), beside SQLite's WAL (~4 MB at its 1,000-page
# checkpoint). Past 12 MB it grows with the traffic.
QUEUE_BOUND_MB = 12.0


@dataclass
class Look:
    t: float
    rss_mb: dict[str, float]
    fds: dict[str, int]
    disk_mb: dict[str, float]
    pids: dict[str, int]


def size_mb(*paths: Path) -> float:
    total = 0
    for path in paths:
        files = [path] if path.is_file() else path.rglob("*") if path.exists() else []
        total += sum(f.stat().st_size for f in files if f.is_file())
    return total / 1e6


def look(workdir: Path, history: Path) -> Look:
    pids = {
        name: pid
        for name, (pid, _) in json.loads((workdir / "run" / "pids.json").read_text()).items()
    }
    rss, fds = {}, {}
    for name, pid in pids.items():
        process = psutil.Process(pid)
        # inference's warm trial process, under a name of its own
        children = {f"{name} trial process": c for c in process.children(recursive=True)}
        for key, p in {name: process, **children}.items():
            rss[key] = p.memory_info().rss / 1e6
            fds[key] = p.num_fds()
    logs = workdir / "logs"
    disk = {name: size_mb(logs / f"{name}.log") for name in pids if name != "broker"}
    disk["broker"] = size_mb(workdir / "broker")
    disk["forwarder queue"] = size_mb(workdir / "queue")
    disk["history"] = size_mb(history)
    return Look(time.monotonic(), rss, fds, disk, pids)


def queued_rows(queue: Path) -> int:
    with sqlite3.connect(f"file:{queue}?mode=ro", uri=True, timeout=30) as db:
        count: int = db.execute("SELECT count(*) FROM q").fetchone()[0]
    return count


def results_in(history: Path) -> int:
    with sqlite3.connect(f"file:{history}?mode=ro", uri=True, timeout=30) as db:
        count: int = db.execute("SELECT count(*) FROM results").fetchone()[0]
    return count


@pytest.mark.timeout(300 + SOAK_S)  # the start and warm-up, then the soak itself
async def test_soak_a_compressed_day(
    tmp_path: Path, site: str, simulator: int, figure: Figure
) -> None:
    soak_s = SOAK_S
    (tmp_path / "flows").mkdir()
    mlp(tmp_path / "flows" / "pump.onnx", f=len(FEATURES))
    port = free_port()
    workdir = tmp_path / "w"
    data = site_data(site, port, simulator, forwarder={"queue_dir": str(workdir / "queue")})
    data["broker"]["start_local"] = True
    data["sources"][0]["poll_ms"] = RATE_MS
    flow = flow_data(sinks=[{"kind": "sqlite", "path": "history.db"}])
    flow["align"]["period_ms"] = RATE_MS
    history = tmp_path / "flows" / "history.db"
    path = write_site(tmp_path, data, flow)
    async with UpProcess(path, workdir, tmp_path / "up.out") as up:
        for name in INSTANCES:
            await up.wait_state(name, "online", timeout=90)
        await asyncio.sleep(WARM_UP_S)
        looks, first_rows = [look(workdir, history)], results_in(history)
        for _ in range(LOOKS):
            await asyncio.sleep(soak_s / LOOKS)
            looks.append(look(workdir, history))
        rows = results_in(history) - first_rows
        restarts = [line for line in up.lines if " restarting" in line or " exited" in line]
        assert await up.stop() == 0
    start, mid, end = looks[0], looks[len(looks) // 2], looks[-1]
    hours = (end.t - start.t) / 3600
    rss_growth = {n: end.rss_mb[n] - mid.rss_mb[n] for n in end.rss_mb}
    fd_growth = {n: end.fds[n] - start.fds[n] for n in end.fds}
    same_pids = all(lk.pids == start.pids for lk in looks)
    per_service = "; ".join(
        f"{n} {start.rss_mb[n]:.0f}→{end.rss_mb[n]:.0f} MB ({rss_growth[n]:+.1f} in the 2nd "
        f"half), {start.fds[n]}→{end.fds[n]} fds"
        for n in end.rss_mb
    )
    disk = "; ".join(
        f"{n} {start.disk_mb[n]:.2f}→{end.disk_mb[n]:.2f} MB "
        f"({(end.disk_mb[n] - start.disk_mb[n]) / hours:.1f} MB/h)"
        for n in end.disk_mb
    )
    waiting = queued_rows(workdir / "queue" / "sqlite.db")
    queue_bounded = end.disk_mb["forwarder queue"] <= QUEUE_BOUND_MB and waiting < 100
    broker_bounded = end.disk_mb["broker"] - start.disk_mb["broker"] < 1.0
    ok = (
        same_pids
        and not restarts
        and max(rss_growth.values()) <= RSS_BOUND_MB
        and max(fd_growth.values()) <= FD_BOUND
        and queue_bounded
        and broker_bounded
    )
    print(json.dumps([vars(lk) for lk in looks], indent=1))
    figure(
        "soak",
        f"the site at 10× its rates (Modbus polled and aligned every {RATE_MS} ms) for "
        f"{soak_s:.0f} s after a {WARM_UP_S} s warm-up, {rows / (end.t - start.t):,.0f} "
        f"results/s into the history ({rows:,} in all)",
        f"start→end per process: {per_service}; disk: {disk}; {waiting} results waiting in the "
        f"queue at the end; restarts {len(restarts)}",
        ok,
    )
    assert ok, (rss_growth, fd_growth, restarts, disk)
