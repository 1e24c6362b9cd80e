"""Per-site credentials on a real mosquitto (`edgefleet site add`'s users and ACL): one site's
credentials tried against another site's tree and the fleet's, as many times as asked. Shared by
`tests/test_site_add.py`, `tests/fleet/test_cloud_auth.py` (through `edgefleet cloud up`'s
broker) and the fault suite's cross-site row."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.broker import LocalBroker
from edgefleet.cloud_auth import FLEET_PASSWORD, FLEET_USER, broker_settings, ensure_fleet_user
from shared.topics import Topics
from tests.helpers import Probe

NOT_AUTHORIZED = 0x87


def site_add(auth: Path, site: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "site", "add", site, "--auth-dir", str(auth),
         "--cloud", "127.0.0.1:8883"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@dataclass
class CrossSite:
    """What plantA's credentials achieved outside its own tree (every figure's goal: 0, but
    `own_refused`, publishes under its own tree that were refused, which shows the ACL let the
    right ones through)."""

    attempts: int = 0
    accepted: list[tuple[str, int]] = field(default_factory=list)  # (topic, reason code)
    retained: set[str] = field(default_factory=set)  # other trees' topics that kept a message
    read: list[str] = field(default_factory=list)  # other trees' messages delivered to plantA
    own_refused: list[str] = field(default_factory=list)
    wrong_password_ok: bool = False
    unknown_user_ok: bool = False

    @property
    def successes(self) -> int:
        logins = self.wrong_password_ok + self.unknown_user_ok
        return len(self.accepted) + len(self.retained) + len(self.read) + logins


def add_two_sites(auth: Path) -> None:
    for site in ("plantA", "plantB"):
        done = site_add(auth, site)
        assert done.returncode == 0, done.stderr


async def cross_site_attempts(tmp_path: Path, attempts: int) -> CrossSite:
    """plantA (its credentials from `site add`) publishes `attempts` times into plantB's tree,
    the fleet's and lookalikes, subscribes to them, and logs in with a wrong password, on a
    broker with the settings `edgefleet cloud up --auth-dir` gives its own."""
    auth = tmp_path / "auth"
    add_two_sites(auth)
    await asyncio.to_thread(ensure_fleet_user, auth)
    settings = broker_settings(auth, tls_port=0)
    broker = LocalBroker(tmp_path / "broker", extra_config=settings).start()
    try:
        return await attempts_on(broker.host, broker.port, auth, attempts)
    finally:
        broker.stop()


def login(host: str, port: int, user: str, password: str, topic: str) -> bool:
    """Whether mosquitto_pub got in with these credentials (False: refused, as it should)."""
    done = subprocess.run(
        ["mosquitto_pub", "-h", host, "-p", str(port), "-u", user, "-P", password, "-t", topic,
         "-m", "x", "-V", "mqttv5"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return not (done.returncode != 0 and "not authorized" in done.stderr.lower())


async def attempts_on(host: str, port: int, auth: Path, attempts: int) -> CrossSite:
    """The attempts against a running broker enforcing `auth` (plantA and plantB added, the
    fleet's user made)."""
    password = (auth / "sites" / "plantA" / "password").read_text()
    fleet_password = (auth / FLEET_PASSWORD).read_text()
    out = CrossSite()
    a, b = Topics("plantA"), Topics("plantB")
    own = [a.reported(), a.status("agent"), a.results("pump"), "ef/fleet/commands"]
    refused = [
        b.desired(), b.reported(), b.results("pump"), b.status("agent"),
        b.config("inference-pump"), "ef/fleet/reply/plantB-agent", "ef/other/desired",
        "ef/plantAx/desired", "elsewhere/x",
    ]  # fmt: skip
    async with Probe(host, port, username="plantA", password=password) as pa:
        for topic in own:  # its own tree: allowed
            result = await pa.publish(topic, {"v": 1}, qos=1, retain=True)
            if result.reason_code >= 0x80:
                out.own_refused.append(topic)
        for i in range(attempts):
            topic = refused[i % len(refused)]
            result = await pa.publish(topic, {"attempt": i}, qos=1, retain=True)
            out.attempts += 1
            if result.reason_code != NOT_AUTHORIZED:
                out.accepted.append((topic, result.reason_code))
    async with Probe(host, port, username=FLEET_USER, password=fleet_password) as fleet:
        # what is retained: A's own publishes, none of its attempts (retained on the broker
        # before the subscription, so delivered before the marker published after)
        await fleet.subscribe("#")
        await fleet.publish("ef/fleet/marker", {}, qos=1)
        await fleet.wait_for("ef/fleet/marker")
        kept = {m.topic for m in fleet.received("#")} - {"ef/fleet/marker"}
        # the attempts' topics only: a running fleet service keeps retained messages too
        out.retained = kept & set(refused)
        out.own_refused += sorted(set(own) - kept - set(out.own_refused))
        for topic in (b.desired(), b.results("pump"), a.desired()):
            await fleet.publish(topic, {"to": topic}, qos=1, retain=True)
    async with Probe(host, port, username="plantA", password=password) as pa:
        # reading: its own desired state only; the subscriptions go in this order, so when
        # its own retained desired state arrives, B's would have come before it
        for topic in (b.desired(), b.results("pump"), "ef/fleet/#", a.desired()):
            await pa.subscribe(topic)
        await pa.wait_for(a.desired())
        out.read = [m.topic for m in pa.received("#") if m.topic != a.desired()]
        out.attempts += 3
    out.wrong_password_ok = await asyncio.to_thread(
        login, host, port, "plantA", "wrong", a.reported()
    )
    out.unknown_user_ok = await asyncio.to_thread(
        login, host, port, "nobody", password, a.reported()
    )
    out.attempts += 2
    return out
