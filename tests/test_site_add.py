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
from tests.cross_site import cross_site_attempts, site_add


async def test_a_site_cannot_publish_into_another_sites_tree(tmp_path: Path) -> None:
    found = await cross_site_attempts(tmp_path, 500)
    auth = tmp_path / "auth"
    again = site_add(auth, "plantA")
    assert again.returncode == 1 and "exists already" in again.stderr
    for name in ("passwd", "acl", "tls/ca.crt", "tls/server.crt", "tls/server.key"):
        assert (auth / name).is_file(), name
    bridge = (auth / "sites" / "plantA" / "bridge.conf").read_text()
    assert "remote_username plantA" in bridge and "topic ef/plantA/desired in 1" in bridge
    # the bridge `up` writes: debug sessions cross it, and its last will marks the site offline
    assert "topic ef/plantA/debug/data/# out 0" in bridge
    assert "notification_topic ef/plantA/bridge" in bridge
    # the ACL lets in what that bridge carries in: its desired state and debug session requests
    acl = (auth / "acl").read_text()
    assert "topic read ef/plantA/desired\ntopic read ef/plantA/debug/session/+\n" in acl
    assert found.attempts == 505
    assert found.own_refused == []  # its own tree: allowed, and kept
    assert found.accepted == [] and found.retained == set()  # each refused with its reason code
    assert found.read == []  # its own desired state only
    assert not found.wrong_password_ok and not found.unknown_user_ok


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
