"""Signed releases: Ed25519 over canonical JSON (through `cryptography`).

The fleet signs every desired state with its signing key; an agent verifies it against the
public keys its site.yaml trusts before it downloads anything. Two trusted keys at once allow a
rotation: trust the new key everywhere, sign with it, then stop trusting the old one.

- canonical JSON: sorted keys, no spaces, UTF-8, no NaN; the `signature` member itself is left
  out, so the signature covers every other byte of meaning (flows, versions, every digest).
- a public key is written `ed25519:{base64 of the 32 raw bytes}`; its id is the first 16 hex
  digits of the sha256 of those bytes, carried in the signature so a verifier picks the key.
- the private key is a PKCS#8 PEM file, created with mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import ConfigError, EdgefleetError
from shared.files import write_atomic

ALG = "ed25519"
SIGNATURE = "signature"


class SignatureError(EdgefleetError):
    """A document is unsigned, signed by a key not trusted here, or its signature is wrong."""


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the document without its `signature`, canonically."""
    body = {k: v for k, v in document.items() if k != SIGNATURE}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def text(self) -> str:
        return f"{ALG}:{base64.b64encode(self.raw).decode()}"

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        alg, sep, data = text.strip().partition(":")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if alg != ALG or not sep or len(raw) != 32:
            raise ConfigError(
                f"not a public key: {text[:60]!r}; expected 'ed25519:' and 32 bytes in base64 "
                "(as `edgefleet keys show` prints it)"
            )
        return cls(raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def save(self, path: Path) -> None:
        """Write the private key; refuses to overwrite one (a lost key cannot be recovered)."""
        if path.exists():
            raise ConfigError(f"{path} exists already; a signing key is never overwritten")
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(path, pem)
        os.chmod(path, 0o600)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the signing key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path}: not an Ed25519 private key")
        return cls(key)

    def sign(self, document: dict[str, Any]) -> dict[str, Any]:
        """`document` with its `signature` member (replacing any it had)."""
        sig = self._key.sign(canonical(document))
        block = {"alg": ALG, "key_id": self.public.key_id, "sig": base64.b64encode(sig).decode()}
        return {**{k: v for k, v in document.items() if k != SIGNATURE}, SIGNATURE: block}


def verify(document: dict[str, Any], trusted: Iterable[PublicKey]) -> PublicKey:
    """The trusted key that signed `document`; `SignatureError` saying why otherwise."""
    block = document.get(SIGNATURE)
    if not isinstance(block, dict):
        raise SignatureError("unsigned: the document has no signature")
    if block.get("alg") != ALG:
        raise SignatureError(f"signature algorithm {block.get('alg')!r} is not {ALG}")
    keys = {k.key_id: k for k in trusted}
    key = keys.get(str(block.get("key_id")))
    if key is None:
        raise SignatureError(
            f"signed by key {block.get('key_id')!r}, which this site does not trust "
            f"(trusted: {', '.join(sorted(keys)) or 'none'})"
        )
    try:
        sig = base64.b64decode(str(block.get("sig")), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature is not base64") from None
    try:
        data = canonical(document)
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"the document cannot be put in canonical form: {exc}") from None
    if not key.verify(sig, data):
        raise SignatureError(f"bad signature for key {key.key_id}: the document was changed")
    return key
