"""Message security: the application certificate (generated on first run if absent), the trust
list of server certificates, and the policy and mode applied to a client before it connects."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen, security_policies
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.opcua.config import SecurityConfig
from shared.config import secret
from shared.errors import ConfigError

log = logging.getLogger(__name__)
CERT_SUFFIXES = {".der", ".pem", ".crt", ".cer"}


async def ensure_certificate(sec: SecurityConfig) -> None:
    """Create the key and a self-signed certificate for `application_uri` if they are absent."""
    if sec.cert_file.is_file() and sec.key_file.is_file():
        return
    for path in (sec.cert_file, sec.key_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    await cert_gen.setup_self_signed_certificate(
        sec.key_file,
        sec.cert_file,
        sec.application_uri,
        socket.gethostname(),
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        {"organizationName": "edgefleet"},
    )
    os.chmod(sec.key_file, 0o600)
    log.info("generated application certificate %s for %s", sec.cert_file, sec.application_uri)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def load_trusted(paths: list[Path]) -> dict[str, x509.Certificate]:
    """Every certificate in the listed files and folders, by SHA-256 of its DER bytes."""
    out: dict[str, x509.Certificate] = {}
    for path in paths:
        files = (
            sorted(p for p in path.iterdir() if p.suffix in CERT_SUFFIXES)
            if path.is_dir()
            else [path]
        )
        for file in files:
            try:
                data = file.read_bytes()
                cert = (
                    x509.load_pem_x509_certificate(data)
                    if b"-----BEGIN" in data
                    else x509.load_der_x509_certificate(data)
                )
            except (OSError, ValueError) as exc:
                raise ConfigError(f"security.trusted: cannot read {file}: {exc}") from None
            out[fingerprint(cert.public_bytes(Encoding.DER))] = cert
    return out


class TrustList:
    """Accepts a server certificate that is in the list (pinned) and within its validity."""

    def __init__(self, sec: SecurityConfig) -> None:
        self.sec = sec
        self.trusted = load_trusted(sec.trusted)
        self.refused: dict[str, str] = {}  # fingerprint → subject of refused certificates

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ServiceError(StatusCodes.BadCertificateTimeInvalid)
        fp = fingerprint(cert.public_bytes(Encoding.DER))
        if self.sec.trust_any_server or fp in self.trusted:
            return
        self.refused[fp] = cert.subject.rfc4514_string()
        log.error(
            "server certificate %s (sha256 %s) of %s is not trusted: add it to security.trusted",
            cert.subject.rfc4514_string(),
            fp,
            app.ApplicationUri,
        )
        raise ServiceError(StatusCodes.BadCertificateUntrusted)


async def apply(client: Client, sec: SecurityConfig, trust: TrustList | None) -> None:
    """Set policy, mode, certificate and trust check on a client that has not connected yet."""
    client.application_uri = sec.application_uri
    if sec.policy == "None":
        if not sec.allow_none:
            raise ConfigError("security mode None is refused by security.allow_none: false")
        return
    await ensure_certificate(sec)
    password = secret("security.key_password", sec.key_password_env)
    policy = getattr(security_policies, f"SecurityPolicy{sec.policy}")
    mode = getattr(ua.MessageSecurityMode, sec.mode)
    client.certificate_validator = trust
    await client.set_security(
        policy, str(sec.cert_file), str(sec.key_file), password, server_certificate=None, mode=mode
    )
