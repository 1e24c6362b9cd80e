"""Sign and SignAndEncrypt sessions with certificates and a user, and refused certificates."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from asyncua.crypto import cert_gen
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgefleet.sim.opcua_server import SimSecurity, node_id
from edgefleet.sim.plant import PlantSimulator
from services.opcua.config import SecurityConfig
from services.opcua.security import ensure_certificate
from services.opcua.service import main
from shared.errors import ConfigError
from shared.topics import Topics
from tests.helpers import Probe, running
from tests.opcua.conftest import make_config

SIGNALS = [{"name": "flow", "node": node_id("Flow")}]
SERVER_URI = "urn:freeopcua:python:server"  # asyncua's default application uri


async def server_pair(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (test setup, tmp_path)
    cert, key = folder / "cert.der", folder / "key.pem"
    await cert_gen.setup_self_signed_certificate(
        key, cert, SERVER_URI, socket.gethostname(), [ExtendedKeyUsageOID.SERVER_AUTH], {}
    )
    return cert, key


def security(
    own: Path, trusted: Path, policy: str = "Basic256Sha256", mode: str = "SignAndEncrypt"
) -> dict[str, Any]:
    return {
        "policy": policy,
        "mode": mode,
        "allow_none": False,
        "cert_file": str(own / "cert.der"),
        "key_file": str(own / "key.pem"),
        "trusted": [str(trusted)],
    }


async def test_sign_and_encrypt_with_user_and_trusted_certificates(
    base_config: dict[str, Any],
    probe: Probe,
    site: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    server_cert, server_key = await server_pair(tmp_path / "server")
    own = tmp_path / "adapter"
    sec = security(own, server_cert)
    await ensure_certificate(SecurityConfig.model_validate(sec))  # what the first run does
    assert (own / "cert.der").is_file() and (own / "key.pem").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("EF_TEST_OPCUA_PASSWORD", "s3cret")
    sim_security = SimSecurity(
        server_cert,
        server_key,
        policies=["Basic256Sha256_SignAndEncrypt", "Aes128Sha256RsaOaep_Sign"],
        trusted_clients=[own / "cert.der"],
        users={"operator": "s3cret"},
    )
    async with PlantSimulator(seed=8, modbus=False, opcua_security=sim_security) as sim:
        endpoint = sim.opcua_endpoint or ""
        auth = {"username": "operator", "password_env": "EF_TEST_OPCUA_PASSWORD"}
        for i, (policy, mode) in enumerate(
            [("Basic256Sha256", "SignAndEncrypt"), ("Aes128Sha256RsaOaep", "Sign")]
        ):
            cfg = make_config(
                {**base_config, "site": site},
                endpoint,
                SIGNALS,
                instance=f"opcua-sec{i}",
                source=f"sec{i}",
                security=security(own, server_cert, policy, mode),
                auth=auth,
            )
            async with running(main(cfg)):
                await probe.wait_for(topics.raw(f"sec{i}"), lambda b: b["q"][0] == 0, count=3)
                status = (
                    await probe.wait_for(
                        topics.status(f"opcua-sec{i}"), lambda s: s["health"]["opcua"]["connected"]
                    )
                )[-1]
                assert status["health"]["opcua"]["security"] == f"{policy}/{mode}"


async def test_aes256_sha256_rsa_pss_sign_and_encrypt(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    """The server offers only Aes256Sha256RsaPss with SignAndEncrypt: data flows through it."""
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    server_cert, server_key = await server_pair(tmp_path / "server")
    own = tmp_path / "adapter"
    sec = security(own, server_cert, "Aes256Sha256RsaPss", "SignAndEncrypt")
    await ensure_certificate(SecurityConfig.model_validate(sec))
    sim_security = SimSecurity(
        server_cert,
        server_key,
        policies=["Aes256Sha256RsaPss_SignAndEncrypt"],
        trusted_clients=[own / "cert.der"],
    )
    async with PlantSimulator(seed=8, modbus=False, opcua_security=sim_security) as sim:
        cfg = make_config(
            {**base_config, "site": site},
            sim.opcua_endpoint or "",
            SIGNALS,
            instance="opcua-pss",
            source="pss",
            security=sec,
        )
        async with running(main(cfg)):
            await probe.wait_for(topics.raw("pss"), lambda b: b["q"][0] == 0, count=3)
            status = (
                await probe.wait_for(
                    topics.status("opcua-pss"), lambda s: s["health"]["opcua"]["connected"]
                )
            )[-1]
    opcua = status["health"]["opcua"]
    assert opcua["security"] == "Aes256Sha256RsaPss/SignAndEncrypt"
    assert opcua["sessions"] == 1 and opcua["state"] == "connected"
    assert probe.received(topics.errors("opcua-pss")) == []


async def test_untrusted_certificates_are_refused_and_reported(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    server_cert, server_key = await server_pair(tmp_path / "server")
    other_cert, _ = await server_pair(tmp_path / "other")
    trusted_client = tmp_path / "trusted-client"
    await ensure_certificate(SecurityConfig.model_validate(security(trusted_client, server_cert)))
    sim_security = SimSecurity(
        server_cert, server_key, trusted_clients=[trusted_client / "cert.der"]
    )
    async with PlantSimulator(seed=8, modbus=False, opcua_security=sim_security) as sim:
        endpoint = sim.opcua_endpoint or ""
        # 1. the adapter does not trust the server's certificate
        cfg = make_config(
            {**base_config, "site": site},
            endpoint,
            SIGNALS,
            instance="opcua-a",
            source="a",
            security=security(trusted_client, other_cert),
        )
        async with running(main(cfg)):
            [err] = await probe.wait_for(topics.errors("opcua-a"))
            await probe.wait_for(
                topics.status("opcua-a"), lambda s: s["health"]["opcua"]["state"] == "refused"
            )
        assert "BadCertificateUntrusted" in err["reason"]
        # 2. the server does not trust the adapter's certificate (generated on this first run)
        fresh = tmp_path / "fresh"
        cfg = make_config(
            {**base_config, "site": site},
            endpoint,
            SIGNALS,
            instance="opcua-b",
            source="b",
            security=security(fresh, server_cert),
        )
        async with running(main(cfg)):
            [err] = await probe.wait_for(topics.errors("opcua-b"))
            await probe.wait_for(
                topics.status("opcua-b"), lambda s: s["health"]["opcua"]["state"] == "refused"
            )
        assert (fresh / "cert.der").is_file()
        print("refused by the server:", err["reason"])
        assert "BadCertificateUntrusted" in err["reason"]
    assert probe.received(topics.raw("a")) == [] and probe.received(topics.raw("b")) == []


def test_mode_none_can_be_refused_by_configuration(base_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="allow_none"):
        make_config(
            base_config, "opc.tcp://127.0.0.1:4840", SIGNALS, security={"allow_none": False}
        )
    with pytest.raises(ConfigError, match="trusted"):
        make_config(
            base_config,
            "opc.tcp://127.0.0.1:4840",
            SIGNALS,
            security={"policy": "Basic256Sha256", "mode": "Sign"},
        )
