"""Ed25519 signatures over canonical JSON: what the agent accepts and what it refuses."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ConfigError
from shared.signing import PublicKey, SignatureError, SigningKey, canonical, verify

DOC: dict[str, Any] = {
    "v": 1,
    "kind": "desired",
    "site": "plant1",
    "revision": 12,
    "flows": [{"name": "pump", "resources": [{"sha256": "ab" * 32, "size": 10}]}],
}


def test_signed_document_verifies_with_the_trusted_key() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    signed = key.sign(DOC)
    assert verify(signed, [other.public, key.public]) == key.public  # rotation: two trusted
    assert canonical(signed) == canonical(DOC)  # the signature covers the rest, not itself


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda d: d.pop("signature"), "unsigned"),
        (lambda d: d.update(revision=13), "bad signature"),
        (lambda d: d["flows"][0]["resources"][0].update(sha256="cd" * 32), "bad signature"),
        (lambda d: d["signature"].update(key_id="0" * 16), "does not trust"),
        (lambda d: d["signature"].update(alg="rsa"), "algorithm"),
        (lambda d: d["signature"].update(sig="!!"), "not base64"),
        (lambda d: d.update(extra=float("nan")), "canonical"),
    ],
)
def test_refusals_say_why(change: Any, error: str) -> None:
    key = SigningKey.generate()
    signed = copy.deepcopy(key.sign(DOC))
    change(signed)
    with pytest.raises(SignatureError, match=error):
        verify(signed, [key.public])


def test_signed_by_an_untrusted_key() -> None:
    signed = SigningKey.generate().sign(DOC)
    with pytest.raises(SignatureError, match="does not trust"):
        verify(signed, [SigningKey.generate().public])


def test_key_files_round_trip_and_are_private(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "keys" / "fleet.key"
    key.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert SigningKey.load(path).public == key.public
    with pytest.raises(ConfigError, match="never overwritten"):
        key.save(path)
    assert PublicKey.parse(key.public.text()) == key.public


@pytest.mark.parametrize("text", ["", "ed25519:", "rsa:AAAA", "ed25519:" + "A" * 10, "ed25519:!!"])
def test_bad_public_key_text(text: str) -> None:
    with pytest.raises(ConfigError, match="not a public key"):
        PublicKey.parse(text)


KEY = SigningKey.generate()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6), st.data())
def test_any_change_to_a_signed_document_is_refused(doc: dict[str, Any], data: Any) -> None:
    signed = KEY.sign(doc)
    assert verify(signed, [KEY.public]) == KEY.public
    key = data.draw(st.text(max_size=6).filter(lambda k: k != "signature"))
    value = data.draw(json_values)
    if key in doc and doc[key] == value:
        return
    changed = {**signed, key: value}
    with pytest.raises(SignatureError):
        verify(changed, [KEY.public])
