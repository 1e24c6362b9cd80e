"""What the agent takes in from `desired`, and what it refuses before any download."""

from __future__ import annotations

from typing import Any

import pytest

from edgefleet.agent.desired import Refused, accept
from shared.messages import DeployedFlow, DesiredState, PinnedResource
from shared.signing import SigningKey

FLEET, OTHER = SigningKey.generate(), SigningKey.generate()


def desired(revision: int = 5, site: str = "plant1") -> dict[str, Any]:
    flow = DeployedFlow(
        name="pump",
        version=2,
        flow="name: pump\n",
        resources=[PinnedResource(kind="model", ref="pump-ae@3", sha256="ab" * 32, size=9)],
    )
    body = DesiredState(site=site, revision=revision, deployment="d1", flows=[flow]).to_wire()
    return FLEET.sign(body)


def test_accepts_a_newer_signed_state() -> None:
    got = accept(desired(5), "plant1", [OTHER.public, FLEET.public], taken_revision=4)
    assert got is not None and got.desired.revision == 5 and got.key_id == FLEET.public.key_id
    assert got.desired.flows[0].resources[0].ref == "pump-ae@3"


def test_the_same_revision_again_is_nothing_to_do() -> None:
    assert accept(desired(5), "plant1", [FLEET.public], taken_revision=5) is None


@pytest.mark.parametrize(
    ("wire", "trusted", "reason"),
    [
        (desired(3), [FLEET.public], "replayed"),
        (desired(6, site="plant2"), [FLEET.public], "wrong_site"),
        (OTHER.sign(desired(6)), [FLEET.public], "signature"),
        ({k: v for k, v in desired(6).items() if k != "signature"}, [FLEET.public], "signature"),
        ({**desired(6), "revision": 7}, [FLEET.public], "signature"),
        (FLEET.sign({"v": 1, "kind": "desired", "site": "plant1"}), [FLEET.public], "malformed"),
        (["not", "a", "dict"], [FLEET.public], "malformed"),
        (desired(6), [], "signature"),
    ],
)
def test_refusals(wire: Any, trusted: list[Any], reason: str) -> None:
    with pytest.raises(Refused) as caught:
        accept(wire, "plant1", trusted, taken_revision=4)
    assert caught.value.reason == reason
