"""Whether the agent takes a desired state in: checked before anything is downloaded.

Refused, with the reason, and never acted on: a payload that is not a desired state, one for
another site, one that is unsigned or whose signature is wrong or from a key this site does not
trust, and one whose revision is not newer than what the node took in already (a replay, or a
retained message seen again after a reconnect — the latter is not an error, just nothing to do).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.errors import EdgefleetError
from shared.messages import DesiredState
from shared.signing import PublicKey, SignatureError, verify


class Refused(EdgefleetError):
    """The desired state is not taken in; `reason` says why in a few words."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Accepted:
    desired: DesiredState
    wire: dict[str, Any]  # as signed, kept on disk with the state
    key_id: str


def accept(
    wire: Any, site: str, trusted: Iterable[PublicKey], taken_revision: int
) -> Accepted | None:
    """The verified desired state, or None when it is the one taken in already.

    Raises `Refused` for anything that must not run."""
    if not isinstance(wire, dict):
        raise Refused("malformed", f"a desired state is an object, got {type(wire).__name__}")
    try:
        key = verify(wire, trusted)
    except SignatureError as exc:
        raise Refused("signature", str(exc)) from None
    try:
        desired = DesiredState.from_wire(wire)
    except EdgefleetError as exc:  # signed but not of this schema: a fleet of another version
        raise Refused("malformed", str(exc)) from None
    for text in desired.trusted_keys or []:
        try:
            PublicKey.parse(text)
        except EdgefleetError as exc:
            raise Refused("malformed", f"trusted_keys: {exc}") from None
    if desired.site != site:
        raise Refused("wrong_site", f"the desired state is for site {desired.site!r}, not {site!r}")
    if desired.revision == taken_revision:
        return None
    if desired.revision < taken_revision:
        raise Refused(
            "replayed",
            f"revision {desired.revision} is older than revision {taken_revision} taken in already",
        )
    return Accepted(desired, wire, key.key_id)
