"""How the console reaches the fleet: the fleet's own command API (MQTT v5 request/response,
`edgefleet/fleet/client.py`), so every change goes through the one handler table in the one
fleet process that owns the SQLite file, the S3 bucket, the signing key and the deploy lock.

Which commands a role may call is decided here, from the table itself: the read-only ones
for everyone signed in, every other one (deploy, cancel, rollback, archive, and what the table
gains later) for operators only. A command whose request has an `author` gets the signed-in
user, whatever the page sent.
"""

from __future__ import annotations

from typing import Any, Protocol

from edgefleet.console.users import Role, User
from edgefleet.fleet.commands import COMMANDS
from edgefleet.fleet.errors import FleetError

READ_ONLY = frozenset(
    {
        "library.list",
        "library.show",
        "flow.list",
        "flow.show",
        "flow.history",
        "flow.diff",
        "node.list",
        "node.show",
        "node.history",
        "group.list",
        "group.show",
        "deployment.list",
        "deployment.show",
    }
)
# Blob transfers are the CLI's (a browser would PUT to S3 itself); the page never needs them.
NOT_FROM_CONSOLE = frozenset({"library.upload_url", "library.commit", "library.download_url"})


class Fleet(Protocol):
    async def call(
        self, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]: ...


class NoFleet:
    """An edge console (`--site`): the node runs without the fleet's library."""

    async def call(
        self, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        raise FleetError(
            "not_allowed",
            "this console reads one site's broker (edgefleet console --site); the library, "
            "flows and deployments are in the fleet's console (edgefleet console --fleet)",
        )


class Forbidden(Exception):
    pass


def authorize(user: User, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    """The args to send for `cmd` on behalf of `user`; `Forbidden` or `FleetError` if not."""
    if cmd not in COMMANDS or cmd in NOT_FROM_CONSOLE:
        raise FleetError("unknown_command", f"the console does not serve {cmd!r}")
    if cmd not in READ_ONLY and user.role is not Role.OPERATOR:
        raise Forbidden(f"{cmd} changes the fleet: only an operator may; {user.name} is a viewer")
    if "author" in COMMANDS[cmd].request.model_fields:
        args = {**args, "author": f"{user.name}@console"}
    return args


def changes(cmd: str) -> bool:
    return cmd not in READ_ONLY
