"""`edgefleet actuator hold|release`: a manual override of one action of a running actuator.

    edgefleet actuator hold --site S --instance I --action A [--value V] [--by WHO] [--reason R]
    edgefleet actuator release --site S --instance I --action A [--by WHO] [--reason R]

`hold` suspends the action's rule; with `--value` it also writes that value (true, false or a
number) through the adapter and reports the value read back. The actuator keeps the hold, who
set it (`--by`, default the user running the command), when and why, across restarts, and shows
it in its status. `release` lets the rule act again.
The request goes to `ef/{site}/cmd/{instance}` (MQTT v5 request/response); the answer, and the
actuator's event, say what happened. Exit codes (edgefleet/cli_errors.py): 0 the actuator
confirmed, 1 it refused or the write failed, 2 bad usage, 3 it did not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import uuid
from typing import Any

import yaml

from edgefleet.cli_errors import UsageError, cli_errors
from shared.messages import ActuatorCommand, WriteResponse
from shared.mqtt import BrokerSettings, NotConnected
from shared.requests import RequestTimeout, requester
from shared.topics import DEFAULT_PREFIX, Topics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet actuator", description=__doc__.split("\n")[0])
    p.add_argument("op", choices=["hold", "release"])
    p.add_argument("--site", required=True)
    p.add_argument("--instance", required=True, help="the actuator instance, e.g. actuator-flow1")
    p.add_argument("--action", required=True, help="the action's name in the actuator config")
    p.add_argument("--value", help="hold only: the value to write and hold (true, false, 1.5)")
    p.add_argument("--by", default=default_user(), help="who holds (default: $USER)")
    p.add_argument("--reason", help="why, kept with the hold (e.g. 'pump maintenance')")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    return p


def default_user() -> str:
    try:
        return os.environ.get("EDGEFLEET_USER") or getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment nor in the password database
        return "unknown"


def parse_value(text: str | None) -> bool | int | float | None:
    if text is None:
        return None
    value: Any = yaml.safe_load(text)
    if not isinstance(value, (bool, int, float)):
        raise UsageError(f"--value must be true, false or a number, got {text!r}")
    return value


async def request(args: argparse.Namespace) -> WriteResponse:
    topics = Topics(args.site, args.prefix)
    client = f"cli-{uuid.uuid4().hex[:10]}"
    command = ActuatorCommand(
        request_id=client,
        op=args.op,
        action=args.action,
        value=parse_value(args.value),
        by=args.by,
        reason=args.reason,
    )
    settings = BrokerSettings(host=args.host, port=args.port, client_id=client, reconnect_max_s=1.0)
    try:
        async with requester(settings, topics.reply(client), connect_timeout=args.timeout) as req:
            answer = await req.request(
                topics.cmd(args.instance), command, timeout=args.timeout, request_id=client
            )
        response: WriteResponse = WriteResponse.from_wire(answer)
        return response
    except (NotConnected, RequestTimeout):
        raise RequestTimeout(
            f"no answer from {args.instance} on site {args.site} within {args.timeout:g} s"
        ) from None


@cli_errors("edgefleet actuator")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.op == "release" and args.value is not None:
        raise UsageError("release takes no --value")
    response = asyncio.run(request(args))
    what = f"{args.op} {args.action}"
    if response.ok:
        readback = "" if response.readback is None else f", read back {response.readback!r}"
        note = f" ({response.error})" if response.error else ""
        print(f"{what}: done{readback}{note}")
        return 0
    print(f"{what}: refused: {response.error}")
    return 1
