"""Debug sessions end to end: the fleet (mosquitto as the cloud broker, SeaweedFS, the fleet
service) and a site (its own mosquitto, bridged to the cloud one by a real mosquitto bridge
written by `bridge_config`, and the agent under the supervisor). The test publishes on the site
broker as a service would and watches the cloud broker as the console would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.broker import LocalBroker, bridge_config
from edgefleet.fleet.client import FleetClient
from edgefleet.fleet.debug_client import DebugMessage, watch
from edgefleet.fleet.errors import FleetError
from edgefleet.site.load import load_site
from edgefleet.site.supervisor import SiteSupervisor
from shared import codec
from shared.messages import DebugSession, now_ns
from shared.mqtt import NO_MATCHING_SUBSCRIBERS
from shared.signing import SigningKey
from shared.topics import Topics
from tests.helpers import Probe, until

KEY = SigningKey.generate()
TIMEOUT = 30


@pytest.fixture
def fleet_config(fleet_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    key = tmp_path / "fleet.key"
    KEY.save(key)
    limits = {"max_seconds": 60, "max_rate_hz": 5, "max_sessions": 2}
    return {**fleet_config, "signing_key": str(key), "debug": limits}


@pytest.fixture
def site_broker(tmp_path: Path, broker: LocalBroker, site: str) -> Iterator[LocalBroker]:
    """The site's mosquitto, bridged to the cloud broker (`broker`) as production does."""
    bridge = bridge_config(site, f"{broker.host}:{broker.port}", prefix=site)
    b = LocalBroker(tmp_path / "site-broker", extra_config=bridge).start()
    try:
        yield b
    finally:
        b.stop()


def write_site(root: Path, site: str, site_broker: LocalBroker, cloud: LocalBroker) -> Path:
    """A site with no source and no flow: its agent only (the test publishes the data)."""
    data = {
        "site": site,
        "prefix": site,
        "broker": {"host": site_broker.host, "port": site_broker.port},
        "timings": {"status_interval_s": 0.5, "reconnect_initial_s": 0.05, "reconnect_max_s": 0.5},
        "supervisor": {"restart_initial_s": 0.2, "restart_max_s": 1.0, "stop_timeout_s": 5},
        "labels": {"role": "pump"},
        "fleet": {
            "trusted_keys": [KEY.public.text()],
            "broker": {"host": cloud.host, "port": cloud.port},
            "debug": {"max_sessions": 3, "max_rate_hz": 5},
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
async def cloud(broker: LocalBroker, site: str) -> AsyncIterator[Probe]:
    """What the console would see on the cloud broker."""
    async with Probe(broker.host, broker.port) as p:
        await p.subscribe(f"{site}/{site}/debug/#")
        await p.subscribe(Topics(site, site).status("agent"))
        yield p


@pytest.fixture
async def local(site_broker: LocalBroker) -> AsyncIterator[Probe]:
    """A publisher on the site broker, as the site's services are."""
    async with Probe(site_broker.host, site_broker.port) as p:
        yield p


async def node_known(fleet: FleetClient, cloud: Probe, site: str) -> None:
    """The agent's status crossed the bridge and the fleet stored it."""
    await cloud.wait_for(Topics(site, site).status("agent"), timeout=TIMEOUT)
    async with asyncio.timeout(TIMEOUT):
        while True:  # the fleet stores statuses in a loop of its own and announces nothing
            try:
                await fleet.call("node.show", {"site": site})
                return
            except FleetError:
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def agent_running(
    tmp_path: Path,
    site: str,
    site_broker: LocalBroker,
    broker: LocalBroker,
    fleet: FleetClient,
    cloud: Probe,
) -> AsyncIterator[Path]:
    """The site's agent under its supervisor, known to the fleet; its site.yaml (to start the
    site again later)."""
    path = write_site(tmp_path / "site", site, site_broker, broker)
    async with SiteSupervisor(load_site(path), tmp_path / "w"):
        await node_known(fleet, cloud, site)
        yield path


async def subscribed(local: Probe, topic: str) -> bool:
    """Whether anyone subscribes `topic` on the site broker: the PUBACK of a QoS 1 publish
    says "no matching subscribers" (MQTT v5) otherwise. In these sites nothing but a debug
    session subscribes raw, samples, results or events."""
    result = await local.publish(topic, {"n": -1}, qos=1)
    return result.reason_code != NO_MATCHING_SUBSCRIBERS


async def state(cloud: Probe, site: str, session: str, wanted: str) -> dict[str, Any]:
    found = await cloud.wait_for(
        Topics(site, site).debug_state(session), lambda s: s["state"] == wanted, timeout=TIMEOUT
    )
    return dict(found[0])


async def open_session(
    fleet: FleetClient, cloud: Probe, site: str, topics: list[str], **limits: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Open a session on the node and wait for its agent to say `open`: the fleet's answer and
    the agent's state."""
    opened = await fleet.call("debug.open", {"node": site, "topics": topics, **limits})
    return opened, await state(cloud, site, opened["session"], "open")


def data(cloud: Probe, site: str, session: str) -> list[dict[str, Any]]:
    return list(cloud.decoded(f"{Topics(site, site).debug_watch(session)[1]}"))


def n_of(data: dict[str, Any]) -> int:
    """The `n` the test published, from a forwarded message's original bytes."""
    return int(codec.decode(data["payload"], data["content_type"])["n"])


async def publish_burst(local: Probe, topic: str, start: int, count: int) -> set[int]:
    """About 100 messages/s, far above a session's rate; the PUBACKs' reason codes."""
    codes = set()
    for n in range(start, start + count):
        codes.add((await local.publish(topic, {"n": n}, encoding="json", qos=1)).reason_code)
        await asyncio.sleep(0.01)
    return codes


async def test_a_session_forwards_decimated_data_over_the_bridge_and_expires_by_itself(
    tmp_path: Path,
    broker: LocalBroker,
    site_broker: LocalBroker,
    fleet: FleetClient,
    cloud: Probe,
    local: Probe,
    site: str,
) -> None:
    topics = Topics(site, site)
    async with agent_running(tmp_path, site, site_broker, broker, fleet, cloud):
        assert not await subscribed(local, topics.samples("pump"))
        rate, seconds = 4.0, 4.0
        started = time.monotonic()
        opened, said = await open_session(
            fleet, cloud, site, ["samples/pump"], rate_hz=rate, seconds=seconds
        )
        session = opened["session"]
        assert opened["topic"] == f"{site}/{site}/debug/data/{session}/#"
        assert opened["topics"] == [topics.samples("pump")]
        assert said["rate_hz"] == rate and said["topics"] == [topics.samples("pump")]

        # the agent subscribes only now, and before it says `open`
        assert await publish_burst(local, topics.samples("pump"), 0, 100) == {0}
        await local.publish(topics.results("pump"), {"n": -1})  # not asked for: not forwarded
        # the burst's last message always gets through (the latest of its interval)
        await cloud.wait_for(opened["topic"], lambda d: n_of(d) == 99, TIMEOUT)

        ended = await state(cloud, site, session, "expired")
        elapsed = time.monotonic() - started
        got = data(cloud, site, session)
        assert {d["topic"] for d in got} == {topics.samples("pump")}
        assert [d["seq"] for d in got] == list(range(1, len(got) + 1))
        # at most one message per 1/rate s: a bound that no load can break
        assert 2 <= len(got) <= rate * elapsed + 1
        assert ended["sent"] == len(got)
        # every published message was either forwarded or counted as dropped
        assert len(got) + sum(d["dropped"] for d in got) == 100
        assert [n_of(d) for d in got] == sorted(n_of(d) for d in got)
        assert ended["dropped"] >= sum(d["dropped"] for d in got) > 0
        assert not await subscribed(local, topics.samples("pump"))  # nothing left after expiry
        assert (await fleet.call("debug.list"))["sessions"] == []


async def test_watch_close_refusals_and_an_agent_restart(
    tmp_path: Path,
    broker: LocalBroker,
    site_broker: LocalBroker,
    fleet: FleetClient,
    cloud: Probe,
    local: Probe,
    site: str,
) -> None:
    topics = Topics(site, site)
    async with agent_running(tmp_path, site, site_broker, broker, fleet, cloud) as path:
        # the fleet refuses, each with its code
        for args, code in (
            ({"node": "nowhere", "topics": ["results/#"]}, "not_found"),
            ({"node": site, "topics": ["results/#"], "seconds": 61}, "too_long"),
            ({"node": site, "topics": ["results/#"], "rate_hz": 6}, "too_fast"),
            ({"node": site, "topics": ["debug/#"]}, "bad_filter"),
            ({"node": site, "topics": ["#"]}, "bad_filter"),
            ({"node": site, "topics": [f"{site}/other/results/#"]}, "bad_filter"),
            ({"node": site, "topics": []}, "invalid"),
        ):
            with pytest.raises(FleetError) as refused:
                await fleet.call("debug.open", args)
            assert refused.value.code == code, (args, refused.value.message)

        # watch: messages decoded, and leaving the loop closes the session
        states: list[str] = []
        stream = watch(fleet, site, ["results/+"], rate_hz=5, seconds=30, on_state=lambda s: (
            states.append(s.state)
        ))  # fmt: skip
        feeder = asyncio.create_task(publish_burst(local, topics.results("pump"), 0, 2000))
        try:
            seen: list[DebugMessage] = []
            async for message in stream:
                seen.append(message)
                if len(seen) == 3:
                    break
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        await stream.aclose()
        assert states[0] == "open"
        assert all(m.topic == topics.results("pump") for m in seen)
        assert [m.payload["n"] for m in seen] == sorted(m.payload["n"] for m in seen)
        assert seen[0].content_type == "application/json"
        watched = seen[0].session
        await state(cloud, site, watched, "closed")
        assert not await subscribed(local, topics.results("pump"))

        # close on command; the node's own limit on sessions; the fleet's
        first, _ = await open_session(fleet, cloud, site, ["raw/+"], seconds=30)
        second, _ = await open_session(fleet, cloud, site, ["raw/plc1", "events/+"], seconds=30)
        assert await subscribed(local, topics.raw("plc2"))
        assert await subscribed(local, topics.events("pump"))
        with pytest.raises(FleetError) as refused:
            await fleet.call("debug.open", {"node": site, "topics": ["raw/+"]})
        assert refused.value.code == "too_many_sessions"
        listed = (await fleet.call("debug.list", {"node": site}))["sessions"]
        assert {s["session"] for s in listed} == {first["session"], second["session"]}
        await fleet.call("debug.close", {"session": second["session"]})
        await state(cloud, site, second["session"], "closed")
        assert not await subscribed(local, topics.events("pump"))
        assert await subscribed(local, topics.raw("plc2"))  # the first session still wants it
        with pytest.raises(FleetError) as refused:
            await fleet.call("debug.close", {"session": second["session"]})
        assert refused.value.code == "not_found"

        # the agent checks for itself: an expired or unsigned request is refused
        late = DebugSession(
            site=site, session="late1", topics=[topics.results("pump")], rate_hz=1,
            expires=now_ns() - 1,
        )  # fmt: skip
        await local.publish(topics.debug_session("late1"), KEY.sign(late.to_wire()), qos=1)
        assert "expired" in (await state(cloud, site, "late1", "refused"))["reason"]
        unsigned = late.model_copy(update={"session": "bare1", "expires": now_ns() + 10**10})
        await local.publish(topics.debug_session("bare1"), unsigned.to_wire(), qos=1)
        assert "signature" in (await state(cloud, site, "bare1", "refused"))["reason"]

    # the agent restarts: the open session goes on (its retained request is its state)
    cloud.messages.clear()
    async with SiteSupervisor(load_site(path), tmp_path / "w"):
        again = await state(cloud, site, first["session"], "open")
        assert again["topics"] == [f"{site}/{site}/raw/+"]
        feeder = asyncio.create_task(publish_burst(local, topics.raw("plc1"), 0, 3000))
        try:
            await cloud.wait_for(f"{site}/{site}/debug/data/{first['session']}/#", timeout=TIMEOUT)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        await fleet.call("debug.close", {"session": first["session"]})
        await state(cloud, site, first["session"], "closed")
        assert not await subscribed(local, topics.raw("plc2"))


async def test_a_session_that_expired_while_the_agent_was_down_does_not_come_back(
    tmp_path: Path,
    broker: LocalBroker,
    site_broker: LocalBroker,
    fleet: FleetClient,
    cloud: Probe,
    local: Probe,
    site: str,
) -> None:
    async with agent_running(tmp_path, site, site_broker, broker, fleet, cloud) as path:
        short, _ = await open_session(fleet, cloud, site, ["results/#"], seconds=2)
    # down past its expiry: the brokers drop the retained request (MQTT v5 message expiry)
    await until(lambda: time.time() > _expiry(short) + 0.5, timeout=TIMEOUT)
    cloud.messages.clear()
    async with SiteSupervisor(load_site(path), tmp_path / "w"):
        later, _ = await open_session(fleet, cloud, site, ["results/#"])
        status = await cloud.wait_for(
            Topics(site, site).status("agent"),
            lambda s: (
                [d["session"] for d in s["health"].get("agent", {}).get("debug", [])]
                == [later["session"]]
            ),
            timeout=TIMEOUT,
        )
        assert status
        assert not cloud.received(Topics(site, site).debug_state(short["session"]))


def _expiry(opened: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(opened["expires_at"]).timestamp()


async def test_the_command_line_watch_prints_json_lines_and_closes_on_ctrl_c(
    tmp_path: Path,
    broker: LocalBroker,
    site_broker: LocalBroker,
    fleet: FleetClient,
    cloud: Probe,
    local: Probe,
    site: str,
) -> None:
    topics = Topics(site, site)
    async with agent_running(tmp_path, site, site_broker, broker, fleet, cloud):
        cli = [sys.executable, "-m", "edgefleet.cli", "debug"]
        where = ["--fleet", f"{broker.host}:{broker.port}", "--prefix", site]
        process = await asyncio.create_subprocess_exec(
            *cli, "watch", site, "samples/+", "--rate", "5", "--for", "1m", *where,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        feeder = asyncio.create_task(publish_burst(local, topics.samples("pump"), 0, 5000))
        try:
            assert process.stdout is not None
            line = json.loads(await asyncio.wait_for(process.stdout.readline(), TIMEOUT))
            assert line["topic"] == topics.samples("pump") and line["node"] == site
            assert isinstance(line["payload"]["n"], int) and line["seq"] >= 1
            listed = await asyncio.create_subprocess_exec(
                *cli, "list", site, "--json", *where, stdout=asyncio.subprocess.PIPE
            )
            shown = json.loads((await listed.communicate())[0])
            assert [s["session"] for s in shown["sessions"]] == [line["session"]]
            process.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, err.decode()
        assert b"open on" in err
        await state(cloud, site, line["session"], "closed")
