"""`edgefleet site add`: per-site users and ACL on a real mosquitto; a site publishes only
under its own tree and reads only its own desired state and the fleet's replies to it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.broker import LocalBroker
from shared.errors import ProtocolError
from shared.mqtt import BrokerSettings, MqttConnection, Received
from shared.topics import Topics
from tests.helpers import Probe

NOT_AUTHORIZED = 0x87


def site_add(auth: Path, site: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "site", "add", site, "--auth-dir", str(auth),
         "--cloud", "127.0.0.1:8883"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_a_site_cannot_publish_into_another_sites_tree(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    for site in ("plantA", "plantB"):
        done = site_add(auth, site)
        assert done.returncode == 0, done.stderr
    again = site_add(auth, "plantA")
    assert again.returncode == 1 and "exists already" in again.stderr
    for name in ("passwd", "acl", "tls/ca.crt", "tls/server.crt", "tls/server.key"):
        assert (auth / name).is_file(), name
    out = auth / "sites" / "plantA"
    bridge = (out / "bridge.conf").read_text()
    assert "remote_username plantA" in bridge and "topic ef/plantA/desired in 1" in bridge
    # the bridge `up` writes: debug sessions cross it, and its last will marks the site offline
    assert "topic ef/plantA/debug/data/# out 0" in bridge
    assert "notification_topic ef/plantA/bridge" in bridge
    password = (out / "password").read_text()
    # the fleet's own user, for this test only (in compose it uses the internal listener)
    await asyncio.to_thread(
        subprocess.run, ["mosquitto_passwd", "-b", str(auth / "passwd"), "fleet", "f"], check=True
    )
    with (auth / "acl").open("a") as acl:
        acl.write("\nuser fleet\ntopic readwrite ef/#\n")
    admin_conf = (
        f"allow_anonymous false\npassword_file {auth / 'passwd'}\nacl_file {auth / 'acl'}\n"
    )
    broker = LocalBroker(tmp_path / "broker", extra_config=admin_conf).start()
    try:
        a, b = Topics("plantA"), Topics("plantB")
        async with Probe(broker.host, broker.port, username="plantA", password=password) as pa:
            # its own tree: allowed
            for topic in (a.reported(), a.status("agent"), a.results("pump"), "ef/fleet/commands"):
                result = await pa.publish(topic, {"v": 1}, qos=1, retain=True)
                assert result.reason_code < 0x80, topic
            # another site's tree and the fleet's: refused, each with its reason code
            refused = [
                b.desired(), b.reported(), b.results("pump"), b.status("agent"),
                b.config("inference-pump"), "ef/fleet/reply/plantB-agent", "ef/other/desired",
                "ef/plantAx/desired", "elsewhere/x",
            ]  # fmt: skip
            for i in range(500):
                topic = refused[i % len(refused)]
                result = await pa.publish(topic, {"attempt": i}, qos=1, retain=True)
                assert result.reason_code == NOT_AUTHORIZED, (topic, result)
        async with Probe(broker.host, broker.port, username="fleet", password="f") as fleet:
            # what is retained: A's own publishes, none of its 500 attempts (retained on the
            # broker before the subscription, so delivered before the marker published after)
            await fleet.subscribe("#")
            await fleet.publish("ef/fleet/marker", {}, qos=1)
            await fleet.wait_for("ef/fleet/marker")
            kept = {m.topic for m in fleet.received("#")} - {"ef/fleet/marker"}
            assert kept == {a.reported(), a.status("agent"), a.results("pump"), "ef/fleet/commands"}
            for topic in (b.desired(), b.results("pump"), a.desired()):
                await fleet.publish(topic, {"to": topic}, qos=1, retain=True)
        async with Probe(broker.host, broker.port, username="plantA", password=password) as pa:
            # reading: its own desired state only; the subscriptions go in this order, so when
            # its own retained desired state arrives, B's would have come before it
            for topic in (b.desired(), b.results("pump"), "ef/fleet/#", a.desired()):
                await pa.subscribe(topic)
            await pa.wait_for(a.desired())
            assert [m.topic for m in pa.received("#")] == [a.desired()]
        wrong = await asyncio.to_thread(
            subprocess.run,
            ["mosquitto_pub", "-p", str(broker.port), "-u", "plantA", "-P", "wrong", "-t",
             a.reported(), "-m", "x", "-V", "mqttv5"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert wrong.returncode != 0 and "not authorized" in wrong.stderr.lower()
    finally:
        broker.stop()


async def test_a_revoked_site_is_cut_off_at_the_reload(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    for site in ("plantC", "plantD"):
        assert site_add(auth, site).returncode == 0
    password = (auth / "sites" / "plantC" / "password").read_text()
    conf = f"allow_anonymous false\npassword_file {auth / 'passwd'}\nacl_file {auth / 'acl'}\n"
    broker = LocalBroker(tmp_path / "broker", extra_config=conf).start()
    try:
        c = Topics("plantC")

        async def ignore(message: Received) -> None:
            pass

        settings = BrokerSettings(
            host=broker.host, port=broker.port, username="plantC", password=password,
            reconnect_initial_s=0.05, reconnect_max_s=0.5,
        )  # fmt: skip
        pc = MqttConnection(settings, ignore)
        task = asyncio.create_task(pc.run())
        try:
            await asyncio.wait_for(pc.wait_connected(), 10)
            assert (await pc.publish(c.reported(), b"{}", qos=1)).reason_code < 0x80
            removed = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "edgefleet.cli", "site", "remove", "plantC",
                 "--auth-dir", str(auth)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert removed.returncode == 0, removed.stderr
            assert "user plantC" not in (auth / "acl").read_text()
            assert "user plantD" in (auth / "acl").read_text()
            assert broker.process is not None
            broker.process.send_signal(signal.SIGHUP)
            # the reload disconnects the revoked session, and its reconnect is refused for good
            with pytest.raises(ProtocolError, match="refused the credentials"):
                await asyncio.wait_for(task, 30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        again = await asyncio.to_thread(
            subprocess.run,
            ["mosquitto_pub", "-p", str(broker.port), "-u", "plantC", "-P", password, "-t",
             c.reported(), "-m", "x", "-V", "mqttv5"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert again.returncode != 0 and "not authorized" in again.stderr.lower()
    finally:
        broker.stop()
