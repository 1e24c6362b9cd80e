"""Messages a receiver refuses leave the way: dead-lettered per sink, reported, managed by CLI.

The cloud broker is a real mosquitto with a password file and an ACL that refuses one flow's
topic to the forwarder's user (MQTT v5 PUBACK 0x87 "not authorized"); the HTTP endpoint is a
real server that answers 400 to a body it cannot take.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.broker import LocalBroker
from services.forwarder.service import main
from shared.messages import ResultBatch
from shared.topics import Kind, Topics
from tests.forwarder.conftest import Endpoint, result_ids, results, unique, wait_all
from tests.forwarder.test_delivery import FAST, forwarder_config, sink_health
from tests.helpers import Probe, running


@pytest.fixture
def guarded_cloud(tmp_path: Path, site: str) -> Iterator[LocalBroker]:
    """A cloud broker where user `edge` may publish the `pump` flow's results only."""
    passwords, acl = tmp_path / "passwd", tmp_path / "acl"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "edge", "s3cret"], check=True)
    acl.write_text(f"user edge\ntopic write ef/{site}/results/pump\ntopic read ef/#\n")
    extra = f"allow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n"
    b = LocalBroker(tmp_path / "cloud", extra_config=extra).start()
    try:
        yield b
    finally:
        b.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "forwarder", "dead-letters", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_refused_topic_is_dead_lettered_at_once_and_the_rest_flows(
    base_config: dict[str, Any],
    tmp_path: Path,
    site: str,
    probe: Probe,
    guarded_cloud: LocalBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = Topics(site)
    monkeypatch.setenv("CLOUD_PASSWORD", "s3cret")
    broker = {"port": guarded_cloud.port, "username": "edge", "password_env": "CLOUD_PASSWORD"}
    sinks = [{"kind": "mqtt", "name": "cloud", "broker": broker, "batch_size": 4, **FAST}]
    config = forwarder_config(base_config, tmp_path, sinks)
    path = tmp_path / "forwarder.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True)))
    await probe.subscribe(topics.everything())
    login = {"username": "edge", "password": "s3cret"}
    async with (
        running(main(config)),
        Probe(guarded_cloud.host, guarded_cloud.port, **login) as remote,
    ):
        await remote.subscribe(topics.all_of(Kind.RESULTS))
        await probe.wait_for(topics.status("fwd"), lambda s: s["state"] == "online")
        for i in range(10):
            if i in (3, 7):  # two refused messages in the middle of the stream
                await probe.publish(topics.results("secret"), results("secret", i, 1), qos=1)
            await probe.publish(topics.results("pump"), results("pump", i * 5, 5), qos=1)

        def remote_ids() -> list[str]:
            batches = remote.decoded(topics.results("pump"))
            return [i for b in batches for i in ResultBatch.from_wire(b).ids]  # derived

        ids = await wait_all(remote_ids, result_ids("pump", 0, 50), timeout=20)
        assert unique(ids) == result_ids("pump", 0, 50)  # nothing blocked, order kept
        done = await probe.wait_for(
            topics.status("fwd"),
            sink_health("cloud", lambda h: h["dead_letters"] == 2 and h["queued"] == 0),
        )
        health = done[-1]["health"]["sink_cloud"]
        assert health["dead_lettered"] == 2 and health["dead_lettered_messages"] == 2
        assert health["sent"] == 50
        [report] = await probe.wait_for(
            topics.errors("fwd"), lambda e: "dead-lettered" in e["reason"]
        )
        assert report["topic"] == topics.results("secret")
        assert "not authorized" in report["reason"].lower() and "0x87" in report["reason"]
        assert "after 1 attempt" in report["reason"]  # a refusal that will not change: at once

        listed = cli("list", "--config", str(path), "--json")
        assert listed.returncode == 0, listed.stderr
        letters = json.loads(listed.stdout)
        assert [d["topic"] for d in letters] == [topics.results("secret")] * 2
        assert all(d["sink"] == "cloud" and "0x87" in d["reason"] for d in letters)
        table = cli("list", "--queue-dir", str(tmp_path / "queues"))
        head, *lines = table.stdout.splitlines()
        assert table.returncode == 0 and head.split()[:3] == ["SINK", "ID", "TOPIC"]
        assert [line.split()[2] for line in lines] == [topics.results("secret")] * 2

        # retried while the forwarder runs: refused again, so back in the store, counted
        first = str(letters[0]["id"])
        retried = cli("retry", "--config", str(path), "--id", first)
        assert retried.returncode == 0 and "1 put back" in retried.stdout
        await probe.wait_for(
            topics.status("fwd"), sink_health("cloud", lambda h: h["dead_lettered"] == 3)
        )
        dropped = cli("drop", "--config", str(path), "--all", "--json")
        assert dropped.returncode == 0
        assert sorted(json.loads(dropped.stdout)["ids"]["cloud"]) == sorted(
            d["id"] for d in letters
        )
        await probe.wait_for(
            topics.status("fwd"), sink_health("cloud", lambda h: h["dead_letters"] == 0)
        )
    assert cli("list", "--config", str(path)).stdout.strip() == "no dead letters"
    assert cli("drop", "--config", str(path), "--all").returncode == 1  # nothing matched
    assert cli("retry", "--config", str(path)).returncode == 2  # neither --id nor --all
    assert cli("list", "--config", str(path), "--sink", "nope").returncode == 2
    assert cli("list", "--queue-dir", str(tmp_path / "queues"), "--sink", "cloud").returncode == 0


async def test_http_refusal_of_a_batch_finds_the_one_message_and_delivers_the_others(
    base_config: dict[str, Any], tmp_path: Path, site: str, probe: Probe, endpoint: Endpoint
) -> None:
    topics = Topics(site)
    endpoint.refuse_topic = topics.results("bad")
    sinks = [{"kind": "http", "name": "it", "url": endpoint.url, "batch_size": 50, **FAST}]
    config = forwarder_config(base_config, tmp_path, sinks)
    await probe.subscribe(topics.status("fwd"))
    endpoint.failing.set()  # let a batch gather, with the bad message in its middle
    async with running(main(config)):
        await probe.wait_for(topics.status("fwd"), lambda s: s["state"] == "online")
        for i in range(20):
            if i == 10:
                await probe.publish(topics.results("bad"), results("bad", 0, 1), qos=1)
            await probe.publish(topics.results("pump"), results("pump", i * 2, 2), qos=1)
        await probe.wait_for(topics.status("fwd"), sink_health("it", lambda h: h["queued"] == 21))
        endpoint.failing.clear()
        done = await probe.wait_for(
            topics.status("fwd"),
            sink_health("it", lambda h: h["queued"] == 0 and h["dead_letters"] == 1),
            timeout=15,
        )
    assert done[-1]["health"]["sink_it"]["sent"] == 40
    assert unique(endpoint.ids()) == result_ids("pump", 0, 40)


async def test_transient_refusal_is_retried_max_attempts_then_dead_lettered_and_the_rest_flows(
    base_config: dict[str, Any],
    tmp_path: Path,
    site: str,
    probe: Probe,
    guarded_cloud: LocalBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ACL's "not authorized" (0x87) taken as a refusal that may change (left out of
    `refused_at_once`, as where the cloud grants ACLs after sites start): the message is sent
    `max_attempts` times, with backoff, then set aside; the others behind it flow in order."""
    topics = Topics(site)
    attempts = 4
    monkeypatch.setenv("CLOUD_PASSWORD", "s3cret")
    broker = {"port": guarded_cloud.port, "username": "edge", "password_env": "CLOUD_PASSWORD"}
    sink = {"kind": "mqtt", "name": "cloud", "broker": broker, "batch_size": 4,
            "max_attempts": attempts, "refused_at_once": [0x90, 0x95, 0x99], **FAST}  # fmt: skip
    config = forwarder_config(base_config, tmp_path, [sink])
    await probe.subscribe(topics.everything())
    login = {"username": "edge", "password": "s3cret"}
    async with (
        running(main(config)),
        Probe(guarded_cloud.host, guarded_cloud.port, **login) as remote,
    ):
        await remote.subscribe(topics.all_of(Kind.RESULTS))
        await probe.wait_for(topics.status("fwd"), lambda s: s["state"] == "online")
        for i in range(10):
            if i == 4:  # refused by the ACL, in the middle of the stream
                await probe.publish(topics.results("secret"), results("secret", 0, 3), qos=1)
            await probe.publish(topics.results("pump"), results("pump", i * 5, 5), qos=1)

        def remote_ids() -> list[str]:
            batches = remote.decoded(topics.results("pump"))
            return [i for b in batches for i in ResultBatch.from_wire(b).ids]  # derived

        ids = await wait_all(remote_ids, result_ids("pump", 0, 50), timeout=30)
        assert unique(ids) == result_ids("pump", 0, 50)  # nothing blocked, order kept
        done = await probe.wait_for(
            topics.status("fwd"),
            sink_health("cloud", lambda h: h["dead_letters"] == 1 and h["queued"] == 0),
            timeout=30,
        )
        health = done[-1]["health"]["sink_cloud"]
        assert health["dead_lettered_messages"] == 1 and health["dead_lettered"] == 3
        assert health["sent"] == 50
        [report] = await probe.wait_for(
            topics.errors("fwd"), lambda e: "dead-lettered" in e["reason"]
        )
        assert report["topic"] == topics.results("secret")
        assert f"after {attempts} attempt(s)" in report["reason"] and "0x87" in report["reason"]
    path = tmp_path / "forwarder.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True)))
    listed = cli("list", "--config", str(path), "--json")
    assert listed.returncode == 0, listed.stderr
    [letter] = json.loads(listed.stdout)
    assert letter["attempts"] == attempts and letter["topic"] == topics.results("secret")
