"""Writes docs/wire-contract.md: shared/contract.py's messages, then the fleet's commands.

The fleet's command table lives with the fleet service (edgefleet/fleet, above shared/ in the
layers), so the whole document is composed here. `make contract` regenerates it; a test keeps
the committed file identical.
"""

from __future__ import annotations

from edgefleet.fleet.commands import COMMANDS
from edgefleet.fleet.errors import CODES
from shared.codec import Encoding
from shared.contract import _json  # the one JSON layout of the document
from shared.contract import render as render_messages
from shared.messages import FleetCommand

FLEET_INTRO = """\
## Fleet commands

Each is a `command` on `ef/fleet/commands` with `cmd` and `args` as below, answered with an
`answer`: `ok: true` and `result`, or `ok: false` and `error {code, message}`. Codes: {codes}.
Blobs never travel here: `library.upload_url` and `library.download_url` hand out presigned S3
URLs (PUT, GET) of short expiry; `library.commit` verifies the uploaded object before any
version exists.
"""


def fleet_commands_section() -> list[str]:
    # The command table lives with the fleet service (edgefleet/fleet), which composes flows;
    # the contract lists it, so the document covers every message on the wire.

    out = [FLEET_INTRO.replace("{codes}", ", ".join(f"`{c}`" for c in CODES))]
    for command in COMMANDS.values():
        request = ", ".join(f"`{n}`" for n in command.request.model_fields) or "none"
        result = ", ".join(f"`{n}`" for n in command.result.model_fields)
        example = FleetCommand(cmd=command.name, args=command.example)
        out += [
            f"### `{command.name}`\n",
            f"{command.doc}\n",
            f"Args: {request}. Result: {result}.\n",
            "```json",
            _json(example.to_wire(Encoding.JSON)),
            "```\n",
        ]
    return out


def render() -> str:
    return render_messages() + "\n" + "\n".join(fleet_commands_section())


if __name__ == "__main__":
    print(render(), end="")
