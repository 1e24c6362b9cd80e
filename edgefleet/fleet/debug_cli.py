"""`edgefleet debug open|close|list|watch`: debug sessions on a node (docs/debug.md).

Same conventions as the other fleet nouns (edgefleet/fleet/cli.py). `watch` prints one JSON
line per forwarded message on stdout (the session's states go to stderr) until Ctrl-C or the
session's end, and closes the session when it stops early.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from edgefleet.fleet.cli import err, out, table, when
from edgefleet.fleet.client import FleetClient, author
from edgefleet.fleet.debug_client import watch
from edgefleet.fleet.nodes_cli import duration
from shared.messages import DebugState, iso

Verb = Callable[[FleetClient, argparse.Namespace], Awaitable[Any]]
Common = Callable[[argparse.ArgumentParser], None]


def add_parsers(nouns: Any, common: Common) -> None:
    debug = nouns.add_parser("debug", help="look at a node's site topics from here, for a while")
    dv = debug.add_subparsers(dest="verb", required=True)
    dopen = dv.add_parser("open", help="NODE TOPIC...: open a session (data on its topic)")
    dwatch = dv.add_parser("watch", help="NODE TOPIC...: open a session and print its messages")
    for sp in (dopen, dwatch):
        sp.add_argument("node")
        sp.add_argument("topics", nargs="+", metavar="TOPIC", help="results/#, samples/pump, ...")
        sp.add_argument(
            "--rate", type=float, default=2.0, help="messages per second per topic, at most (2)"
        )
        sp.add_argument(
            "--for", dest="seconds", type=duration, default=60.0, help="how long (60s, 5m)"
        )
    dclose = dv.add_parser("close", help="end a session now")
    dclose.add_argument("session")
    dls = dv.add_parser("list", help="the sessions open, with what each node says of them")
    dls.add_argument("node", nargs="?")
    for sp in (dopen, dwatch, dclose, dls):
        common(sp)


def _args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "node": args.node,
        "topics": args.topics,
        "rate_hz": args.rate,
        "seconds": args.seconds,
        "author": author(),
    }


async def debug_open(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("debug.open", _args(args))
    if not args.json:
        out.print(
            f"session {result['session']} on {result['node']} until "
            f"{when(result['expires_at'])}: {', '.join(result['topics'])} at "
            f"{result['rate_hz']:g}/s per topic"
        )
        out.print(f"data on {result['topic']}, states on {result['state_topic']}")
    return result


async def debug_close(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("debug.close", {"session": args.session})
    if not args.json:
        out.print(f"session {result['session']} on {result['node']} closed")
    return result


async def debug_list(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("debug.list", {"node": args.node} if args.node else {})
    if not args.json:
        t = table("session", "node", "topics", "rate", "expires", "sent", "dropped", "author")
        for s in result["sessions"]:
            agent = s["agent"] or {}
            t.add_row(
                s["session"], s["node"], ", ".join(s["topics"]), f"{s['rate_hz']:g}/s",
                when(s["expires_at"]), str(agent.get("sent", "-")),
                str(agent.get("dropped", "-")), s["author"] or "-",
            )  # fmt: skip
        out.print(t)
    return result


def _state(state: DebugState) -> None:
    if state.state == "open":
        err.print(
            f"session {state.session} open on {state.site}: {', '.join(state.topics)} at "
            f"{state.rate_hz:g}/s per topic until {iso(state.expires or 0)}",
            markup=False,
        )
    else:
        err.print(
            f"session {state.session} {state.state} ({state.sent} sent, "
            f"{state.dropped} dropped by decimation){': ' + state.reason if state.reason else ''}",
            markup=False,
        )


async def debug_watch(fleet: FleetClient, args: argparse.Namespace) -> Any:
    a = _args(args)
    stream = watch(
        fleet, a["node"], a["topics"], a["rate_hz"], a["seconds"], author=a["author"],
        on_state=_state,
    )  # fmt: skip
    async for message in stream:
        sys.stdout.write(json.dumps(message.to_json(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
    args.json = False  # the lines were the output
    return None


VERBS: dict[tuple[str, str], Verb] = {
    ("debug", "open"): debug_open,
    ("debug", "close"): debug_close,
    ("debug", "list"): debug_list,
    ("debug", "watch"): debug_watch,
}
