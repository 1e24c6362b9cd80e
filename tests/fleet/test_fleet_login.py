"""The fleet's broker with passwords and TLS, as a production cloud broker has them: the command
line (flags, a URL, the environment) and the console's fleet.yaml reach the fleet through it;
a wrong password, an unknown CA and no credentials are refused with exit code 3."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.broker import LocalBroker, free_port
from edgefleet.cloud_auth import _cert, _pem_key, ensure_tls
from edgefleet.fleet.address import FleetBroker
from edgefleet.fleet.client import FleetClient, connect
from edgefleet.fleet.service import main
from shared.config import BrokerConfig
from tests.fleet.conftest import fleet_of
from tests.helpers import running

PASSWORDS = {"svc": "service-pw", "ops": "p@ss:word"}  # URL-quoting matters for the second


@pytest.fixture
def tls(tmp_path: Path) -> Path:
    folder = tmp_path / "tls"
    ensure_tls(folder, "127.0.0.1")
    return folder


@pytest.fixture
def tls_port() -> int:
    return free_port()


@pytest.fixture
def mtls_port() -> int:
    return free_port()


def client_certificate(tls: Path) -> tuple[Path, Path]:
    """A client certificate signed by the CA `ensure_tls` made, and its key."""
    ca_key = serialization.load_pem_private_key((tls / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("ops", key, ("edgefleet cloud CA", ca_key), None)
    (tls / "ops.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tls / "ops.key").write_bytes(_pem_key(key))
    return tls / "ops.crt", tls / "ops.key"


@pytest.fixture
def broker(tmp_path: Path, tls: Path, tls_port: int, mtls_port: int) -> Iterator[LocalBroker]:
    """No anonymous clients; a plain listener, a TLS one (the CA `ensure_tls` made), and one
    that requires a client certificate from that CA."""
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", "-b", *create, str(passwd), user, password], check=True)
    conf = (
        f"allow_anonymous false\npassword_file {passwd}\n"
        f"listener {tls_port} 127.0.0.1\ncafile {tls / 'ca.crt'}\n"
        f"certfile {tls / 'server.crt'}\nkeyfile {tls / 'server.key'}\n"
        f"listener {mtls_port} 127.0.0.1\ncafile {tls / 'ca.crt'}\n"
        f"certfile {tls / 'server.crt'}\nkeyfile {tls / 'server.key'}\nrequire_certificate true\n"
    )
    b = LocalBroker(tmp_path / "broker", extra_config=conf).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def fleet_config(fleet_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("TEST_FLEET_SVC_PW", PASSWORDS["svc"])
    broker = {**fleet_config["broker"], "username": "svc", "password_env": "TEST_FLEET_SVC_PW"}
    return {**fleet_config, "broker": broker}


def edgefleet(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_FLEET")}
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )


async def serving(client: FleetClient) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:  # the service subscribes once connected and announces nothing
            try:
                return await client.call("library.list", timeout=0.5)
            except Exception:
                await asyncio.sleep(0.05)


async def test_the_cli_and_the_console_log_in_over_tls_and_bad_logins_exit_3(
    fleet_config: dict[str, Any],
    tls: Path,
    tls_port: int,
    mtls_port: int,
    site: str,
    broker: LocalBroker,
) -> None:
    ca = tls / "ca.crt"
    url = f"mqtts://ops:p%40ss%3Aword@127.0.0.1:{tls_port}"
    async with running(main(fleet_of(fleet_config))):
        async with connect(FleetBroker.of(url, cafile=ca), prefix=site) as client:
            assert (await serving(client))["resources"] == []
        # the console's fleet.yaml broker: credentials and TLS from its keys
        console = BrokerConfig.model_validate(
            {"host": "127.0.0.1", "port": tls_port, "username": "svc",
             "password_env": "TEST_FLEET_SVC_PW", "tls": True, "ca_file": str(ca)}
        )  # fmt: skip
        async with connect(console, prefix=site) as client:
            assert (await client.call("library.list"))["resources"] == []

        def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
            return edgefleet("library", "list", "--prefix", site, "--timeout", "5", *args, **env)

        # flags and a URL; the password from the environment
        flags = await asyncio.to_thread(
            run, "--fleet", f"mqtts://ops@127.0.0.1:{tls_port}", "--cafile", str(ca),
            EDGEFLEET_FLEET_PASSWORD=PASSWORDS["ops"],
        )  # fmt: skip
        assert flags.returncode == 0 and "the library is empty" in flags.stdout, flags.stderr
        # the environment alone
        env = await asyncio.to_thread(run, EDGEFLEET_FLEET=url, EDGEFLEET_FLEET_CA=str(ca))
        assert env.returncode == 0, env.stderr
        # the plain listener, with a password in the URL
        plain = f"mqtt://ops:p%40ss%3Aword@127.0.0.1:{broker.port}"
        assert (await asyncio.to_thread(run, "--fleet", plain)).returncode == 0

        # a client certificate where the listener requires one (flags, then the environment)
        cert, key = client_certificate(tls)
        mtls = f"mqtts://ops:p%40ss%3Aword@127.0.0.1:{mtls_port}"
        with_cert = await asyncio.to_thread(
            run, "--fleet", mtls, "--cafile", str(ca), "--cert", str(cert), "--key", str(key)
        )
        assert with_cert.returncode == 0, with_cert.stderr
        env_cert = await asyncio.to_thread(
            run, EDGEFLEET_FLEET=mtls, EDGEFLEET_FLEET_CA=str(ca),
            EDGEFLEET_FLEET_CERT=str(cert), EDGEFLEET_FLEET_KEY=str(key),
        )  # fmt: skip
        assert env_cert.returncode == 0, env_cert.stderr
        no_cert = await asyncio.to_thread(run, "--fleet", mtls, "--cafile", str(ca))
        assert no_cert.returncode == 3, no_cert.stderr

        wrong = await asyncio.to_thread(
            run, "--fleet", f"mqtts://ops:nope@127.0.0.1:{tls_port}", "--cafile", str(ca)
        )
        assert wrong.returncode == 3 and "credentials" in wrong.stderr, wrong.stderr
        assert "nope" not in wrong.stderr  # the password is not printed
        no_ca = await asyncio.to_thread(run, "--fleet", url)  # the system's CAs: not ours
        assert no_ca.returncode == 3 and "certificate" in no_ca.stderr, no_ca.stderr
        anonymous = await asyncio.to_thread(run, "--fleet", f"127.0.0.1:{broker.port}")
        assert anonymous.returncode == 3, anonymous.stderr
        missing = await asyncio.to_thread(run, "--fleet", url, "--cafile", str(tls / "none.crt"))
        assert missing.returncode == 2 and "none.crt" in missing.stderr, missing.stderr
        odd = await asyncio.to_thread(run, "--fleet", "http://127.0.0.1:1")
        assert odd.returncode == 2 and "mqtts://" in odd.stderr, odd.stderr
