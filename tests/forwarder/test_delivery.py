"""The forwarder against real brokers and a real HTTP endpoint: outages, a full queue, junk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlite_utils

from edgefleet.broker import LocalBroker
from services.forwarder.config import ForwarderConfig
from services.forwarder.service import main
from shared.config import validate
from shared.messages import ResultBatch
from shared.topics import Kind, Topics
from tests.forwarder.conftest import Endpoint, event, result_ids, results, unique, wait_all
from tests.helpers import Probe, running

FAST = {"retry_initial_s": 0.05, "retry_max_s": 0.3}


def forwarder_config(
    base: dict[str, Any], tmp_path: Path, sinks: list[dict[str, Any]], **extra: Any
) -> ForwarderConfig:
    cfg = {**base, "instance": "fwd", "queue_dir": str(tmp_path / "queues"), "sinks": sinks}
    return validate(ForwarderConfig, {**cfg, **extra}, "test")


def sink_health(name: str, check: Any) -> Any:
    def predicate(status: dict[str, Any]) -> bool:
        section = status.get("health", {}).get(f"sink_{name}")
        return status["state"] == "online" and section is not None and bool(check(section))

    return predicate


async def test_cloud_broker_down_then_back_every_result_arrives_in_order(
    base_config: dict[str, Any], tmp_path: Path, site: str, probe: Probe, cloud: LocalBroker
) -> None:
    topics = Topics(site)
    sinks = [
        {"kind": "mqtt", "name": "cloud", "broker": {"port": cloud.port}, **FAST},
        {"kind": "sqlite", "name": "history", "path": str(tmp_path / "history.db"), **FAST},
    ]
    config = forwarder_config(base_config, tmp_path, sinks)
    durable = {"client_id": f"{site}-cloud-probe", "clean_start": False, "session_expiry_s": 600}
    await probe.subscribe(topics.status("fwd"))
    async with running(main(config)), Probe(cloud.host, cloud.port, **durable) as remote:
        await remote.subscribe(topics.all_of(Kind.RESULTS))
        await probe.wait_for(topics.status("fwd"), lambda s: s["state"] == "online")
        for i in range(20):
            await probe.publish(topics.results("pump"), results("pump", i * 10, 10), qos=1)
        await remote.wait_for(topics.results("pump"), count=20)
        # a round trip after the acks: the broker has taken them before it stops, or it rightly
        # delivers those messages again to the durable probe (not the forwarder's duplicates)
        assert (await remote.publish_raw(f"{site}-sync", b"", qos=1)).ok

        cloud.stop()
        for i in range(20, 50):
            await probe.publish(topics.results("pump"), results("pump", i * 10, 10), qos=1)
        await probe.wait_for(
            topics.status("fwd"), sink_health("cloud", lambda h: h["queued_results"] >= 100)
        )
        cloud.start()

        def remote_ids() -> list[str]:
            batches = remote.decoded(topics.results("pump"))
            return [i for b in batches for i in ResultBatch.from_wire(b).ids]  # derived

        ids = await wait_all(remote_ids, result_ids("pump", 0, 500), timeout=20)
        assert unique(ids) == result_ids("pump", 0, 500)  # all of them, in order
        done = await probe.wait_for(
            topics.status("fwd"),
            sink_health("cloud", lambda h: h["queued"] == 0 and h["sent"] == 500),
        )
        health = done[-1]["health"]["sink_cloud"]
        assert health["dropped"] == 0
        assert len(ids) - 500 <= health["duplicates_suspected"]

    db = sqlite_utils.Database(tmp_path / "history.db")
    rows = list(db.query("SELECT id, flow, t, time, model, outputs FROM results ORDER BY t"))
    assert [r["id"] for r in rows] == result_ids("pump", 0, 500)
    assert rows[1]["model"] == "pump-ae@3" and rows[1]["time"].startswith("2023-11-14T22:13:20.001")
    assert abs(json.loads(rows[1]["outputs"])["score"] - 0.01) < 1e-6


async def test_http_endpoint_fails_then_recovers_events_go_first(
    base_config: dict[str, Any], tmp_path: Path, site: str, probe: Probe, endpoint: Endpoint
) -> None:
    topics = Topics(site)
    sinks = [{"kind": "http", "name": "it", "url": endpoint.url, "batch_size": 50, **FAST}]
    config = forwarder_config(base_config, tmp_path, sinks)
    await probe.subscribe(topics.status("fwd"))
    endpoint.failing.set()
    async with running(main(config)):
        await probe.wait_for(topics.status("fwd"), lambda s: s["state"] == "online")
        for i in range(30):
            await probe.publish(topics.results("pump"), results("pump", i * 5, 5), qos=1)
        await probe.publish(topics.events("pump"), event("pump", 1), qos=1)
        await probe.wait_for(
            topics.status("fwd"),
            sink_health("it", lambda h: h["failed"] >= 2 and h["queued"] == 31),
        )
        assert endpoint.refused >= 2 and not endpoint.bodies
        endpoint.failing.clear()
        await probe.wait_for(
            topics.status("fwd"), sink_health("it", lambda h: h["sent"] == 151), timeout=15
        )
    assert unique(endpoint.ids()) == result_ids("pump", 0, 150)
    first = endpoint.bodies[0]
    assert first["site"] == site and first["messages"][0]["body"]["kind"] == "event"  # ahead
    body = first["messages"][1]["body"]
    assert body["time"][0].endswith("Z") or "+00:00" in body["time"][0]


async def test_full_queue_drops_oldest_results_keeps_events_and_counts(
    base_config: dict[str, Any], tmp_path: Path, site: str, probe: Probe, endpoint: Endpoint
) -> None:
    topics = Topics(site)
    limits = {"max_messages": 10}
    sinks = [{"kind": "http", "name": "it", "url": endpoint.url, "queue": limits, **FAST}]
    config = forwarder_config(base_config, tmp_path, sinks)
    await probe.subscribe(topics.status("fwd"))
    endpoint.failing.set()
    async with running(main(config)):
        await probe.wait_for(topics.status("fwd"), lambda s: s["state"] == "online")
        await probe.publish(topics.events("pump"), event("pump", 1), qos=1)
        for i in range(30):
            await probe.publish(topics.results("pump"), results("pump", i * 2, 2), qos=1)
        await probe.publish(topics.events("pump"), event("pump", 2), qos=1)
        full = await probe.wait_for(
            topics.status("fwd"), sink_health("it", lambda h: h["dropped_messages"] == 22)
        )
        health = full[-1]["health"]["sink_it"]
        assert health["queued"] == 10 and health["dropped"] == 44  # 22 batches of 2 results
        endpoint.failing.clear()
        await probe.wait_for(topics.status("fwd"), sink_health("it", lambda h: h["sent"] == 18))
    kinds = [m["body"]["kind"] for b in endpoint.bodies for m in b["messages"]]
    assert kinds[:2] == ["event", "event"]
    assert unique(endpoint.ids()) == result_ids("pump", 44, 16)  # the newest 8 batches


async def test_malformed_input_is_reported_and_the_rest_goes_on(
    base_config: dict[str, Any], tmp_path: Path, site: str, probe: Probe
) -> None:
    topics = Topics(site)
    path = tmp_path / "history.db"
    sinks = [{"kind": "sqlite", "name": "history", "path": str(path), **FAST}]
    config = forwarder_config(base_config, tmp_path, sinks)
    await probe.subscribe(topics.everything())
    async with running(main(config)):
        await probe.wait_for(topics.status("fwd"), lambda s: s["state"] == "online")
        await probe.publish_raw(topics.results("pump"), b"\xc1garbage", qos=1)
        broken = results("pump", 0, 3)
        broken["latency_us"] = broken["latency_us"][:1]
        await probe.publish(topics.results("pump"), broken, qos=1)
        await probe.publish(topics.events("pump"), {"v": 1, "kind": "event"}, qos=1)
        await probe.publish(topics.results("pump"), results("pump", 10, 3), qos=1)
        await probe.publish(topics.events("pump"), event("pump", 7), encoding="json", qos=1)
        await probe.wait_for(topics.errors("fwd"), count=3)
        done = await probe.wait_for(
            topics.status("fwd"),
            lambda s: s["health"]["rejected"] == 3 and s["health"]["sink_history"]["sent"] == 4,
        )
        assert done[-1]["health"]["sink_history"]["queued"] == 0
    db = sqlite_utils.Database(path)
    assert [r["id"] for r in db.query("SELECT id FROM results")] == result_ids("pump", 10, 3)
    [ev] = list(db.query("SELECT * FROM events"))
    assert ev["decision"] == "acted" and ev["reason"] == "score high 7"
