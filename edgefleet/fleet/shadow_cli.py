"""`edgefleet shadow report|stop FLOW`, `edgefleet promote FLOW`: a flow's shadow model across
the fleet (the candidate itself is deployed with `edgefleet deploy FLOW@N --shadow MODEL@M`).

A target (`--to GROUP`, `--nodes`, `--selector`) narrows the nodes; without one, every node
whose latest desired state runs FLOW. Same conventions as the other fleet nouns (a table by
default, `--json` for the result, exit 0 / 1 / 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from edgefleet.fleet.cli import out, table
from edgefleet.fleet.client import FleetClient, author
from edgefleet.fleet.nodes_cli import (
    Common,
    Verb,
    _deploy_options,
    _print_plan,
    strategy,
    strategy_options,
)


def add_parsers(nouns: Any, common: Common) -> None:
    sh = nouns.add_parser("shadow", help="a flow's shadow model across the fleet")
    sv = sh.add_subparsers(dest="verb", required=True)
    rep = sv.add_parser("report", help="FLOW: per node and overall, shadow against live")
    stop = sv.add_parser("stop", help="FLOW: deploy the same flow version without its shadow")
    pro = nouns.add_parser("promote", help="FLOW: a new flow version with the shadow model live")
    pro.set_defaults(verb="")
    pro.add_argument("--note", default="", help="why, for the history")
    for p in (rep, stop, pro):
        p.add_argument("flow")
        target = p.add_mutually_exclusive_group()
        target.add_argument("--to", "--target", dest="group", help="a group")
        target.add_argument("--nodes", help="sites, comma-separated")
        target.add_argument("--selector", "-l", help="a label selector")
        common(p)
    for p in (stop, pro):
        _deploy_options(p)
    strategy_options(pro)  # promote goes out like any deployment: in stages when asked


def _target(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"flow": args.flow}
    if args.group:
        request["group"] = args.group
    elif args.nodes:
        request["nodes"] = [s.strip() for s in args.nodes.split(",") if s.strip()]
    elif args.selector:
        request["selector"] = args.selector
    return request


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _us(figures: dict[str, Any], key: str = "p99") -> str:
    value = figures.get(key)
    return "-" if value is None else f"{value:.0f}"


async def report(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("shadow.report", _target(args))
    if args.json:
        return result
    t = table(
        "site", "flow", "shadow", "state", "compared", "agree", "differ", "corr",
        "Δscore p99", "live run p99 µs", "shadow run p99 µs", "live latency p99 µs",
    )  # fmt: skip
    for n in result["nodes"]:
        running = n["desired_shadow"] or "-"
        if n["desired_shadow"] and n["compared"] == 0:
            running += f" (runs: {n['running_shadow'] or 'none'})"
        t.add_row(
            n["site"], n["flow"], running, n["state"], str(n["compared"]),
            _num(n["label_agreement"]), str(n["decisions_differ"]), _num(n["score_corr"]),
            _num(n["score_diff"].get("p99"), 4), _us(n["live_run_us"]), _us(n["shadow_run_us"]),
            _us(n["live_latency_us"]),
        )  # fmt: skip
    o = result["overall"]
    t.add_row(
        "[bold]overall[/bold]", "", "", f"{o['reporting']}/{o['nodes']} nodes", str(o["compared"]),
        _num(o["label_agreement"]), str(o["decisions_differ"]), _num(o["score_corr"]),
        _num(o["score_diff_p99"], 4), _num(o["live_run_us_p99"], 0),
        _num(o["shadow_run_us_p99"], 0), "",
    )  # fmt: skip
    out.print(t)
    return result


async def stop(fleet: FleetClient, args: argparse.Namespace) -> Any:
    request = {
        **_target(args),
        "timeout_s": args.health_timeout,
        "dry_run": args.dry_run,
        "author": author(),
    }
    result = await fleet.call("shadow.stop", request)
    if not args.json:
        for deployment in result["deployments"]:
            _print_plan(deployment)
    return result


async def promote(fleet: FleetClient, args: argparse.Namespace) -> Any:
    request = {
        **_target(args),
        "timeout_s": args.health_timeout,
        "dry_run": args.dry_run,
        "note": args.note,
        "author": author(),
    }
    staged = strategy(args)
    if staged is not None:
        request["strategy"] = staged
    result = await fleet.call("promote", request)
    if not args.json:
        out.print(
            f"{result['model']} goes live in {result['flow']} (was {result['previous']}; "
            f"back with: edgefleet rollback {args.flow} --to {result['previous'].split('@')[1]})"
        )
        _print_plan(result["deploy"])
    return result


VERBS: dict[tuple[str, str], Verb] = {
    ("shadow", "report"): report,
    ("shadow", "stop"): stop,
    ("promote", ""): promote,
}
FLEET_VERBS = ("report", "stop")  # `edgefleet shadow VERB` served by the fleet
