"""The forwarder killed again and again, and the site broker restarted, while results flow."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlite_utils
import yaml

from edgefleet.broker import LocalBroker
from services.forwarder.service import main
from shared.messages import ResultBatch
from shared.topics import Kind, Topics
from tests.forwarder.conftest import result_ids, results, unique, wait_all
from tests.forwarder.test_delivery import FAST, forwarder_config
from tests.helpers import Probe, running, until

BATCHES, PER_BATCH = 300, 4


def start_forwarder(path: Path) -> subprocess.Popen[bytes]:
    with (path.parent / "forwarder.log").open("ab") as log:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "run", "forwarder", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def publish_results(probe: Probe, topic: str, batches: int, pause_s: float) -> None:
    for i in range(batches):
        await probe.publish(topic, results("pump", i * PER_BATCH, PER_BATCH), qos=1)
        await asyncio.sleep(pause_s)  # the scenario: a stream, not one burst


def counters(queue: Path) -> dict[str, int]:
    with sqlite3.connect(queue) as db:
        return dict(db.execute("SELECT name, value FROM meta").fetchall())


async def test_forwarder_sigkilled_again_and_again_loses_nothing(
    base_config: dict[str, Any], tmp_path: Path, site: str, probe: Probe, cloud: LocalBroker
) -> None:
    topics = Topics(site)
    history = tmp_path / "history.db"
    sinks = [
        {"kind": "mqtt", "name": "cloud", "broker": {"port": cloud.port}, **FAST},
        {"kind": "sqlite", "name": "history", "path": str(history), **FAST},
    ]
    config = forwarder_config(base_config, tmp_path, sinks)
    path = tmp_path / "forwarder.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True)))
    expected = result_ids("pump", 0, BATCHES * PER_BATCH)
    durable = {"client_id": f"{site}-cloud-probe", "clean_start": False, "session_expiry_s": 600}
    status = topics.status("fwd")
    await probe.subscribe(status)

    process = start_forwarder(path)
    try:
        async with Probe(cloud.host, cloud.port, **durable) as remote:
            await remote.subscribe(topics.all_of(Kind.RESULTS))
            await probe.wait_for(status, lambda s: s["state"] == "online", timeout=20)
            flow = asyncio.create_task(
                publish_results(probe, topics.results("pump"), BATCHES, 0.01)
            )
            kills = 0
            while not flow.done() or kills < 3:
                await asyncio.sleep(0.4 + 0.3 * (kills % 3))  # mid-stream, at varying points
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                kills += 1
                process = start_forwarder(path)
            await flow

            def remote_ids() -> list[str]:
                batches = remote.decoded(topics.results("pump"))
                return [i for b in batches for i in ResultBatch.from_wire(b).ids]  # derived

            ids = await wait_all(remote_ids, expected, timeout=40)
            assert unique(ids) == expected  # in order, after dropping duplicates by id
            pid = process.pid
            await probe.wait_for(status, lambda s: s["health"].get("pid") == pid, timeout=20)
            process.send_signal(signal.SIGTERM)  # the last one ends cleanly
            try:
                assert process.wait(30) == 0
            except subprocess.TimeoutExpired:
                raise AssertionError((tmp_path / "forwarder.log").read_text()[-3000:]) from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    stored = [r["id"] for r in sqlite_utils.Database(history).query("SELECT id FROM results")]
    assert sorted(stored) == sorted(expected)  # every result, once (keyed by id)
    duplicates = len(ids) - len(expected)
    cloud_counters = counters(tmp_path / "queues" / "cloud.db")
    print(f"kills={kills} duplicates at the cloud={duplicates} counters={cloud_counters}")
    assert cloud_counters["sent"] >= len(expected) and cloud_counters["dropped"] == 0
    assert duplicates <= cloud_counters["duplicates_suspected"]  # each one was foreseen


async def test_site_broker_restarted_while_results_flow(
    broker: LocalBroker, base_config: dict[str, Any], tmp_path: Path, site: str, probe: Probe
) -> None:
    topics = Topics(site)
    out = tmp_path / "out" / "results.jsonl"
    sinks = [{"kind": "file", "name": "lines", "path": str(out), "max_bytes": 20_000, **FAST}]
    config = forwarder_config(base_config, tmp_path, sinks)
    expected = result_ids("pump", 0, 100 * PER_BATCH)
    await probe.subscribe(topics.status("fwd"))
    async with running(main(config)):
        await probe.wait_for(topics.status("fwd"), lambda s: s["state"] == "online")
        flow = asyncio.create_task(publish_results(probe, topics.results("pump"), 100, 0.01))
        await until(lambda: out.exists() and out.stat().st_size > 0)  # results are flowing
        broker.restart()  # the forwarder's session and what was queued for it survive
        await flow

        def file_ids() -> list[str]:
            files = sorted(out.parent.glob("results.jsonl*"), reverse=True)
            lines = [line for f in files for line in f.read_text().splitlines()]
            return [json.loads(line)["id"] for line in lines]

        ids = await wait_all(file_ids, expected, timeout=30)
    assert unique(ids) == expected  # rotated files read oldest first: in order
    assert len(list(out.parent.glob("results.jsonl.*"))) >= 1
