from __future__ import annotations

import json
import re
from pathlib import Path

from edgefleet.contract import render
from shared import codec
from shared.messages import CONTROL_PLANE, HOT_PATH

DOC = Path(__file__).parents[2] / "docs" / "wire-contract.md"


def test_the_committed_contract_is_what_the_code_sends() -> None:
    assert DOC.read_text() == render(), "run `make contract` and commit docs/wire-contract.md"


def test_every_example_decodes_with_its_own_schema() -> None:
    blocks = re.findall(r"```json\n(.*?)\n```", render(), re.S)
    kinds = set()
    for block in blocks:
        wire = codec.decode(block.encode(), codec.JSON)
        kind = wire["kind"]
        kinds.add(kind)
        schema = HOT_PATH.get(kind) or CONTROL_PLANE[kind]
        schema.from_wire(wire)  # raises if the example does not fit
        json.loads(block)
    assert kinds == set(HOT_PATH) | set(CONTROL_PLANE)
