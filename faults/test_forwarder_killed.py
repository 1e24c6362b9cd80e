"""Forwarder killed: SIGKILL every few tenths of a second while results flow, hundreds of times.
Figure: acknowledged results lost (at the cloud and in the SQLite history), queue files that
fail SQLite's integrity check, duplicates the cloud saw (foreseen by the forwarder's counter)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlite_utils
import yaml

from edgefleet.broker import LocalBroker
from faults.conftest import Figure, ResultIds, scaled
from shared.topics import Kind, Topics
from tests.forwarder.conftest import result_ids, results, unique, wait_all
from tests.forwarder.test_delivery import FAST, forwarder_config
from tests.forwarder.test_faults import counters, start_forwarder
from tests.helpers import Probe

PER_BATCH = 10


async def test_forwarder_killed_hundreds_of_times(
    base_config: dict[str, Any],
    tmp_path: Path,
    site: str,
    probe: Probe,
    cloud: LocalBroker,
    figure: Figure,
) -> None:
    kills_wanted = scaled(200, least=5)
    topics = Topics(site)
    history = tmp_path / "history.db"
    sinks = [
        {"kind": "mqtt", "name": "cloud", "broker": {"port": cloud.port}, **FAST},
        {"kind": "sqlite", "name": "history", "path": str(history), **FAST},
    ]
    config = forwarder_config(base_config, tmp_path, sinks)
    path = tmp_path / "forwarder.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True)))
    durable = {"client_id": f"{site}-cloud-probe", "clean_start": False, "session_expiry_s": 3600}
    status = topics.status("fwd")
    await probe.subscribe(status)
    sent = 0
    done = asyncio.Event()

    async def publish() -> None:  # about 1,000 results/s until the kills are done
        nonlocal sent
        while not done.is_set():
            await probe.publish(topics.results("pump"), results("pump", sent, PER_BATCH), qos=1)
            sent += PER_BATCH
            await asyncio.sleep(0.01)

    process = start_forwarder(path)
    started = time.monotonic()
    try:
        async with Probe(cloud.host, cloud.port, **durable) as remote:
            await remote.subscribe(topics.all_of(Kind.RESULTS))
            await probe.wait_for(status, lambda s: s["state"] == "online", timeout=30)
            flow = asyncio.create_task(publish())
            kills = 0
            while kills < kills_wanted:
                pid = process.pid  # killed only once it works: online, then a varying moment

                def runs_as(s: dict[str, Any], pid: int = pid) -> bool:
                    return bool(s["health"].get("pid") == pid)

                await probe.wait_for(status, runs_as)
                await asyncio.sleep(0.05 + 0.1 * (kills % 4))
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                kills += 1
                process = start_forwarder(path)
            done.set()
            await flow
            expected = result_ids("pump", 0, sent)

            remote_ids = ResultIds(remote, topics.results("pump"))
            drained = time.monotonic()
            ids = await wait_all(remote_ids, expected, timeout=300)
            drain_s = time.monotonic() - drained
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    elapsed = time.monotonic() - started
    stored = {r["id"] for r in sqlite_utils.Database(history).query("SELECT id FROM results")}
    lost_cloud = len(set(expected) - set(ids))
    lost_history = len(set(expected) - stored)
    corrupt = 0
    for db in (tmp_path / "queues").glob("*.db"):
        with sqlite3.connect(db) as conn:
            corrupt += conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
    duplicates = len(ids) - len(unique(ids))
    foreseen = counters(tmp_path / "queues" / "cloud.db")["duplicates_suspected"]
    ok = lost_cloud == 0 and lost_history == 0 and corrupt == 0 and duplicates <= foreseen
    figure(
        "forwarder killed",
        f"SIGKILL ×{kills} in {elapsed:.0f} s, {sent:,} results at ~1,000/s",
        f"lost {lost_cloud} (cloud) / {lost_history} (history), {corrupt} corrupt queue files, "
        f"{duplicates} duplicates at the cloud ({foreseen} foreseen), drained {drain_s:.1f} s "
        "after the last kill",
        ok,
    )
    assert ok
