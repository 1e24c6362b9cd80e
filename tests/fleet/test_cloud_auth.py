"""`edgefleet cloud up --auth-dir`: the broker it runs enforces the users and ACL `edgefleet site
add` writes. A site added while it runs (the reload `site add` sends) bridges in over TLS with
its own credentials (desired state and a debug session request in, status and reported state
out); another site's credentials get nowhere in its tree; an unknown user and an anonymous
client are refused; the fleet service, the CLI and the console work as the fleet's user."""

from __future__ import annotations

import asyncio
import http.cookiejar
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from edgefleet.broker import LocalBroker, bridge_config, free_port
from edgefleet.cloud_auth import BROKER_PID, FLEET_PASSWORD, FLEET_USER
from edgefleet.fleet.address import ENV_PASSWORD
from edgefleet.fleet.cloud import CloudProcess, auth_of, build_parser
from shared.topics import Topics
from tests.cross_site import add_two_sites, attempts_on, login, site_add
from tests.fleet.test_deploy import announce, report
from tests.helpers import Probe

CLI = (sys.executable, "-m", "edgefleet.cli")
PASSWORD = "correct horse battery"


def cli(*args: str, password: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_PASSWORD}
    if password is not None:
        env[ENV_PASSWORD] = password
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60)


def nodes_page(url: str, state: Path) -> str:
    """/nodes as a signed-in operator sees it (the console asks the fleet over the broker)."""
    subprocess.run(
        [*CLI, "console", "user", "add", "ana", "--role", "operator", "--state", str(state),
         "--replace"],
        input=f"{PASSWORD}\n", text=True, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    form = urllib.parse.urlencode({"name": "ana", "password": PASSWORD, "next": "/nodes"})
    with opener.open(f"{url}/login", data=form.encode(), timeout=60) as page:
        return str(page.read().decode())


def site_bridge(auth: Path, site: str, tls_port: int) -> str:
    """The bridge `edgefleet up` writes from the site's fleet.yaml that `site add` made: TLS
    against the fleet's CA, the site's user and password."""
    out = auth / "sites" / site
    settings = (
        f"bridge_cafile {out / 'ca.crt'}",
        f"remote_username {site}",
        f"remote_password {(out / 'password').read_text()}",
        "restart_timeout 1 10",
    )
    return bridge_config(site, f"127.0.0.1:{tls_port}", settings=settings)


async def test_cloud_up_with_an_auth_dir_keeps_each_site_in_its_own_tree(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    add_two_sites(auth)  # before the start: tls/ exists, so the TLS listener opens
    console_port = free_port()
    cloud = CloudProcess(
        tmp_path / "cloud", console_port=console_port, log=tmp_path / "cloud.log", auth_dir=auth
    )
    await asyncio.to_thread(cloud.start)
    site_broker: LocalBroker | None = None
    try:
        host, port = "127.0.0.1", cloud.port
        assert (auth / BROKER_PID).is_file()
        fleet_password = (auth / FLEET_PASSWORD).read_text()
        address = f"mqtt://{FLEET_USER}@{host}:{port}"
        # the fleet service answers the fleet's user; without the password nobody gets in
        for _ in range(60):  # `ready:` comes when the fleet service starts, not when it serves
            listing = ("library", "list", "--fleet", address, "--timeout", "1")
            listed = await asyncio.to_thread(cli, *listing, password=fleet_password)
            if listed.returncode == 0:
                break
        assert listed.returncode == 0 and "the library is empty" in listed.stdout, listed.stderr
        anonymous = await asyncio.to_thread(
            cli, "library", "list", "--fleet", f"{host}:{port}", "--timeout", "5", password=None
        )
        assert anonymous.returncode != 0 and "refused the credentials" in anonymous.stderr

        # a site added while cloud up runs: `site add` reloads its broker
        added = await asyncio.to_thread(site_add, auth, "plantC")
        assert added.returncode == 0, added.stderr
        assert "reloaded" in added.stdout, added.stdout
        c = Topics("plantC")
        bridge = site_bridge(auth, "plantC", cloud.tls_port)
        site_broker = LocalBroker(tmp_path / "site", extra_config=bridge).start()
        async with (
            Probe(host, port, username=FLEET_USER, password=fleet_password) as fleet,
            Probe(site_broker.host, site_broker.port) as local,
        ):
            await fleet.subscribe(c.bridge())
            await fleet.subscribe(c.reported())
            await fleet.wait_until(
                lambda: any(m.topic == c.bridge() and m.payload == b"1" for m in fleet.messages),
                timeout=60,
            )
            # in: the desired state and a debug session request (the ACL lets plantC read both)
            await local.subscribe(c.desired())
            await local.subscribe(c.debug_sessions())
            await fleet.publish(c.desired(), {"revision": 1}, qos=1, retain=True)
            await fleet.publish(c.debug_session("s1"), {"open": True}, qos=1, retain=True)
            assert (await local.wait_for(c.desired(), timeout=30))[0] == {"revision": 1}
            await local.wait_for(c.debug_sessions(), timeout=30)
            # out: its agent's status (the fleet learns the node) and its reported state
            await announce(local, "ef", "plantC", {"role": "pump"})
            await report(local, "ef", "plantC", 1, "applied")
            reported = await fleet.wait_for(c.reported(), timeout=30)
            assert reported[0]["state"] == "applied"

            async def node_listed() -> str:
                for _ in range(60):
                    done = await asyncio.to_thread(
                        cli, "node", "list", "--fleet", address, password=fleet_password
                    )
                    if "plantC" in done.stdout:
                        return done.stdout
                    await asyncio.sleep(0.5)  # the fleet records the status it just got
                raise AssertionError(done.stdout + done.stderr)

            await node_listed()
        # the console, on the same fleet's user, shows the node
        page = await asyncio.to_thread(
            nodes_page, f"http://127.0.0.1:{console_port}", cloud.workdir / "console"
        )
        assert "plantC" in page

        # another site's credentials, an unknown user and a wrong password, through cloud up
        found = await attempts_on(host, port, auth, 200)
        assert found.own_refused == []
        assert found.accepted == [] and found.retained == set()
        assert found.read == []
        assert not found.wrong_password_ok and not found.unknown_user_ok

        # removed while it runs: `site remove` reloads the broker, plantC is out for good
        site_broker.stop()
        removed = await asyncio.to_thread(
            cli, "site", "remove", "plantC", "--auth-dir", str(auth), password=None
        )
        assert removed.returncode == 0 and "reloaded" in removed.stdout, removed.stderr
        c_password = bridge.split("remote_password ", 1)[1].split("\n", 1)[0]
        assert not await asyncio.to_thread(login, host, port, "plantC", c_password, c.reported())
        assert "user fleet" in (auth / "acl").read_text()  # the fleet's block stays
    finally:
        if site_broker is not None:
            site_broker.stop()
        await asyncio.to_thread(cloud.stop)
    assert not (auth / BROKER_PID).exists()  # no reload signal to a pid that may be reused


def test_the_workdirs_auth_folder_is_used_once_it_exists(tmp_path: Path) -> None:
    """A restart without --auth-dir never opens a cloud whose sites have credentials."""
    args = build_parser().parse_args(["up", "--workdir", str(tmp_path)])
    assert auth_of(args, tmp_path) is None
    (tmp_path / "auth").mkdir()
    assert auth_of(args, tmp_path) == tmp_path / "auth"
    given = build_parser().parse_args(["up", "--auth-dir", str(tmp_path / "elsewhere")])
    assert auth_of(given, tmp_path) == (tmp_path / "elsewhere").resolve()
