"""`edgefleet node|group|deploy|deployment|rollback ...`: the fleet's nodes and deployments.

Imported by cli.py when one of these nouns runs (it uses cli.py's table helpers).

Same conventions as `library` and `flow` (edgefleet/fleet/cli.py): a table by default, `--json`
for the command's result, exit 0 / 1 (refused or unreachable) / 2 (bad usage).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from typing import Any

from edgefleet.fleet.cli import out, table, when
from edgefleet.fleet.client import FleetClient, author

Verb = Callable[[FleetClient, argparse.Namespace], Awaitable[Any]]
Common = Callable[[argparse.ArgumentParser], None]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(text: str) -> float:
    """`120s`, `2m`, `1.5h`, `500ms` or plain seconds."""
    m = _DURATION.match(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 120s, 2m, 1h)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def add_parsers(nouns: Any, common: Common) -> None:
    node = nouns.add_parser("node", help="edge nodes (one site stack each)")
    nv = node.add_subparsers(dest="verb", required=True)
    nls = nv.add_parser("list", help="every node: labels, online, revisions, flows")
    nls.add_argument("--selector", "-l", help="only nodes matching a label selector")
    nshow = nv.add_parser("show", help="one node: labels, versions, groups, last report")
    nshow.add_argument("site")
    nlabel = nv.add_parser("label", help="set k=v or remove k- fleet labels (they win)")
    nlabel.add_argument("site")
    nlabel.add_argument("changes", nargs="+", metavar="k=v|k-")
    nhist = nv.add_parser("history", help="a node's desired revisions: when, why, what changed")
    nhist.add_argument("site")

    group = nouns.add_parser("group", help="named label selectors")
    gv = group.add_subparsers(dest="verb", required=True)
    gcreate = gv.add_parser("create", help="NAME 'SELECTOR' (e.g. 'role=pump,plant in (p1,p2)')")
    gcreate.add_argument("name")
    gcreate.add_argument("selector")
    gls = gv.add_parser("list", help="every group: selector, members")
    gshow = gv.add_parser("show", help="members; with --node, why a node is (not) a member")
    gshow.add_argument("name")
    gshow.add_argument("--node", help="explain this node's membership")
    gdel = gv.add_parser("delete", help="remove a group")
    gdel.add_argument("name")

    dep = nouns.add_parser("deploy", help="FLOW@N [FLOW@N ...] --to GROUP | --nodes | --selector")
    dep.set_defaults(verb="")
    dep.add_argument("flows", nargs="+", metavar="FLOW@N")
    target = dep.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", dest="group", help="a group")
    target.add_argument("--nodes", help="sites, comma-separated")
    target.add_argument("--selector", "-l", help="a label selector")
    _deploy_options(dep)
    dep.add_argument("--note", default="", help="why, for the history")
    dep.add_argument(
        "--shadow", metavar="MODEL@N", help="run this library model beside the flow's live one"
    )
    strategy_options(dep)

    rb = nouns.add_parser("rollback", help="FLOW --to N: deploy FLOW@N where FLOW runs")
    rb.set_defaults(verb="")
    rb.add_argument("flow")
    rb.add_argument("--to", type=int, required=True, help="the flow version to go back to")
    _deploy_options(rb)

    dm = nouns.add_parser("deployment", help="deployments and their state per node")
    dv = dm.add_subparsers(dest="verb", required=True)
    dls = dv.add_parser("list", help="the latest deployments")
    dls.add_argument("--limit", type=int, default=20)
    dshow = dv.add_parser("show", help="per node: state, timings, error")
    dshow.add_argument("id")
    dcancel = dv.add_parser("cancel", help="nodes in progress go back to what they ran")
    dcancel.add_argument("id")
    dpause = dv.add_parser("pause", help="a staged deployment: the next stage waits")
    dpause.add_argument("id")
    dresume = dv.add_parser("resume", help="a paused staged deployment goes on")
    dresume.add_argument("id")
    for sp in (
        nls, nshow, nlabel, nhist, gcreate, gls, gshow, gdel, dep, rb, dls, dshow, dcancel,
        dpause, dresume,
    ):  # fmt: skip
        common(sp)


def _deploy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--health-timeout",
        type=duration,
        default=120.0,
        help="per node: fail it when not applied within this (120s)",
    )
    p.add_argument("--dry-run", action="store_true", help="show what each node would get")


def strategy_options(p: argparse.ArgumentParser) -> None:
    """A staged rollout's options (api.Strategy): `deploy` and `promote` take the same."""
    staged = p.add_mutually_exclusive_group()
    staged.add_argument(
        "--stages", help="cumulative stages, each a count or a percentage: 1,10%%,100%%"
    )
    staged.add_argument("--canary", help="a count or a percentage first, then the rest")
    p.add_argument(
        "--abort-above",
        default="0",
        help="per stage, failures (count or %%) beyond which the deployment aborts (0)",
    )
    p.add_argument("--soak", type=duration, default=0.0, help="wait after a stage held")
    p.add_argument("--seed", help="a stable shuffled node order (default: by site id)")


def strategy(args: argparse.Namespace) -> dict[str, Any] | None:
    """The request's `strategy` from strategy_options' arguments; None: every node at once."""
    stages = [args.canary, "100%"] if args.canary else args.stages and args.stages.split(",")
    if not (stages or args.abort_above != "0" or args.soak or args.seed):
        return None
    return {
        "stages": stages or ["100%"],
        "abort_above": args.abort_above,
        "soak_s": args.soak,
        "seed": args.seed,
    }


def _when(text: str | None) -> str:
    return when(text) if text else "-"


def presence(n: dict[str, Any]) -> str:
    """`online`, or `stale (45 s)`: how long since the fleet heard from it."""
    if n["online"] == "stale" and n.get("seen_ago_s") is not None:
        return f"stale ({n['seen_ago_s']:.0f} s)"
    return str(n["online"])


def _nodes_table(nodes: list[dict[str, Any]]) -> Any:
    t = table("site", "online", "labels", "desired", "reported", "flows", "last seen")
    for n in nodes:
        labels = ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items()))
        reported = (
            f"{n['reported_revision']} {n['reported_state']}"
            if n["reported_revision"] is not None
            else "-"
        )
        t.add_row(
            n["site"], presence(n), labels or "-", str(n["desired_revision"] or "-"), reported,
            ", ".join(n["flows"]) or "-", _when(n["last_seen"]),
        )  # fmt: skip
    return t


async def node_list(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("node.list", {"selector": args.selector} if args.selector else {})
    if not args.json:
        if not result["nodes"]:
            out.print("no nodes: a site's agent announces its node when `edgefleet up` runs")
        else:
            out.print(_nodes_table(result["nodes"]))
    return result


async def node_show(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("node.show", {"site": args.site})
    if not args.json:
        n = result["node"]
        out.print(f"[bold]{n['site']}[/bold]  {presence(n)}  last seen {_when(n['last_seen'])}")
        for what in ("labels", "agent_labels", "fleet_labels"):
            shown = ", ".join(f"{k}={v}" for k, v in sorted(n[what].items())) or "-"
            out.print(f"{what.replace('_', ' ') + ':':<14} {shown}")
        versions = n["agent"].get("versions", {})
        out.print(f"{'versions:':<14} {', '.join(f'{k} {v}' for k, v in versions.items()) or '-'}")
        out.print(f"{'groups:':<14} {', '.join(result['groups']) or '-'}")
        out.print(
            f"{'desired:':<14} revision {n['desired_revision']}: {', '.join(n['flows']) or '-'}"
        )
        r = result["reported"]
        if r:
            line = f"revision {r['revision']} {r['state']}"
            out.print(
                f"{'reported:':<14} {line}" + (f"  error: {r['error']}" if r.get("error") else "")
            )
    return result


async def node_label(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("node.label", {"site": args.site, "changes": args.changes})
    if not args.json:
        labels = result["node"]["labels"]
        out.print(f"{args.site}: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return result


async def node_history(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("node.history", {"site": args.site})
    if not args.json:
        t = table("revision", "issued", "deployment", "flows", "changes", "state")
        for r in result["revisions"]:
            t.add_row(
                str(r["revision"]), _when(r["issued"]), r["deployment"] or "-",
                ", ".join(r["flows"]) or "-", r["changes"], r["state"] or "-",
            )  # fmt: skip
        out.print(t)
    return result


def _groupstable(groups: list[dict[str, Any]]) -> Any:
    t = table("name", "selector", "members", "created")
    for g in groups:
        t.add_row(g["name"], g["selector"], ", ".join(g["members"]) or "-", _when(g["created"]))
    return t


async def group_create(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call(
        "group.create", {"name": args.name, "selector": args.selector, "author": author()}
    )
    if not args.json:
        g = result["group"]
        out.print(f"created group {g['name']} ({g['selector']}): {', '.join(g['members']) or '-'}")
    return result


async def group_list(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("group.list")
    if not args.json:
        out.print(_groupstable(result["groups"]))
    return result


async def group_show(fleet: FleetClient, args: argparse.Namespace) -> Any:
    request: dict[str, Any] = {"name": args.name}
    if args.node:
        request["node"] = args.node
    result = await fleet.call("group.show", request)
    if not args.json:
        g = result["group"]
        out.print(f"[bold]{g['name']}[/bold]  {g['selector']}")
        out.print(_nodes_table(result["nodes"]))
        e = result["explain"]
        if e:
            verdict = "is a member" if e["member"] else "is not a member"
            out.print(f"{e['site']} {verdict} of {g['name']}:")
            t = table("requirement", "ok", "because")
            for w in e["why"]:
                t.add_row(w["requirement"], "yes" if w["ok"] else "no", w["reason"])
            out.print(t)
    return result


async def group_delete(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("group.delete", {"name": args.name})
    if not args.json:
        out.print(f"deleted group {result['name']}")
    return result


def _print_plan(result: dict[str, Any]) -> None:
    d = result["deployment"]
    if result["dry_run"]:
        out.print("dry run: nothing published")
    else:
        out.print(f"deployment {d['id']}: {', '.join(d['flows'])} to {len(result['plan'])} node(s)")
    t = table("stage", "site", "revision", "flows", "changes", "supersedes")
    for p in result["plan"]:
        t.add_row(
            str(p["stage"] + 1), p["site"], str(p["revision"]), ", ".join(p["flows"]),
            p["changes"], p["superseded"] or "-",
        )  # fmt: skip
    out.print(t)
    if not result["dry_run"]:
        out.print(f"follow it: edgefleet deployment show {d['id']}")


async def deploy(fleet: FleetClient, args: argparse.Namespace) -> Any:
    request: dict[str, Any] = {
        "flows": args.flows,
        "timeout_s": args.health_timeout,
        "dry_run": args.dry_run,
        "note": args.note,
        "author": author(),
    }
    if args.shadow:
        request["shadow"] = args.shadow
    staged = strategy(args)
    if staged is not None:
        request["strategy"] = staged
    if args.group:
        request["group"] = args.group
    elif args.nodes:
        request["nodes"] = [s.strip() for s in args.nodes.split(",") if s.strip()]
    else:
        request["selector"] = args.selector
    result = await fleet.call("deploy", request)
    if not args.json:
        _print_plan(result)
    return result


async def rollback(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call(
        "rollback",
        {
            "flow": args.flow,
            "to": args.to,
            "timeout_s": args.health_timeout,
            "dry_run": args.dry_run,
            "author": author(),
        },
    )
    if not args.json:
        _print_plan(result)
    return result


async def deployment_list(fleet: FleetClient, args: argparse.Namespace) -> Any:
    result = await fleet.call("deployment.list", {"limit": args.limit})
    if not args.json:
        t = table("id", "flows", "target", "state", "nodes", "created", "author")
        for d in result["deployments"]:
            target = ", ".join(f"{k} {v}" for k, v in d["target"].items())
            counts = ", ".join(f"{n} {s}" for s, n in sorted(d["counts"].items()))
            t.add_row(
                d["id"], ", ".join(d["flows"]), target, d["state"], counts, _when(d["created"]),
                d["author"] or "-",
            )  # fmt: skip
        out.print(t)
    return result


async def deployment_show(fleet: FleetClient, args: argparse.Namespace) -> Any:
    request = {"id": args.id} | ({"author": author()} if args.verb == "cancel" else {})
    result = await fleet.call(f"deployment.{args.verb}", request)
    if not args.json:
        d = result["deployment"]
        out.print(f"[bold]{d['id']}[/bold]  {', '.join(d['flows'])}  {d['state']}")
        out.print(
            f"created {_when(d['created'])} by {d['author'] or '-'}; timeout {d['timeout_s']:g} s"
        )
        if d["cancelled"]:
            out.print(f"cancelled {_when(d['cancelled'])} by {d['cancelled_by'] or '-'}")
        if d["strategy"]:
            s = d["strategy"]
            paused = f"; paused {_when(d['paused'])}" if d["paused"] else ""
            out.print(
                f"stages {', '.join(s['stages'])}; abort above {s['abort_above']}; "
                f"soak {s['soak_s']:g} s{paused}"
            )
            for st in d["stages"]:
                counts = ", ".join(f"{n} {k}" for k, n in sorted(st["counts"].items()))
                out.print(f"  stage {st['index'] + 1}: {st['state']:<11} {counts}")
            if d["reason"]:
                out.print(f"[bold]aborted[/bold]: {d['reason']}")
        t = table("stage", "site", "revision", "state", "timings (ms)", "error", "updated")
        for n in result["nodes"]:
            timings = ", ".join(f"{k} {v:.0f}" for k, v in n["timings_ms"].items())
            t.add_row(
                str(n["stage"] + 1), n["site"], str(n["revision"] or "-"), n["state"],
                timings or "-", n["error"] or "-", _when(n["updated"]),
            )  # fmt: skip
        out.print(t)
    return result


VERBS: dict[tuple[str, str], Verb] = {
    ("node", "list"): node_list,
    ("node", "show"): node_show,
    ("node", "label"): node_label,
    ("node", "history"): node_history,
    ("group", "create"): group_create,
    ("group", "list"): group_list,
    ("group", "show"): group_show,
    ("group", "delete"): group_delete,
    ("deploy", ""): deploy,
    ("rollback", ""): rollback,
    ("deployment", "list"): deployment_list,
    ("deployment", "show"): deployment_show,
    ("deployment", "cancel"): deployment_show,
    ("deployment", "pause"): deployment_show,
    ("deployment", "resume"): deployment_show,
}
NOUNS = ("node", "group", "deploy", "deployment", "rollback")
