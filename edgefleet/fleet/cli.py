"""`edgefleet library ...`, `edgefleet flow ...` (and, in nodes_cli.py, `node`, `group`,
`deploy`, `deployment`, `rollback`): clients of the fleet's command table.

Tables by default, `--json` for scripts (the command's result, the same fields as the table and
more); exit 0 on success, 1 when the fleet refused or could not be reached, 2 on bad usage.
Errors go to stderr with what to do next. Transfers above a few MB show a progress bar, on a
terminal only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from edgefleet.cli_errors import INTERRUPTED, OK, UsageError, cli_errors
from edgefleet.fleet.address import add_fleet_options, fleet_of
from edgefleet.fleet.client import FleetClient, author, connect
from edgefleet.fleet.diff import FlowDiff
from edgefleet.fleet.diff import render as render_diff
from shared.topics import DEFAULT_PREFIX

PROGRESS_ABOVE = 4 * 2**20  # bytes: smaller transfers are over before a bar would help
KIND_BY_SUFFIX = {".onnx": "model", ".py": "script"}

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _common(p: argparse.ArgumentParser) -> None:
    add_fleet_options(p)
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (ef)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet", description=__doc__)
    nouns = p.add_subparsers(dest="noun", required=True)

    lib = nouns.add_parser("library", help="models and scripts in the fleet's library")
    lv = lib.add_subparsers(dest="verb", required=True)
    push = lv.add_parser("push", help="push a model (.onnx) or script (.py) as NAME@N")
    push.add_argument("file", type=Path)
    push.add_argument("--name", required=True, help="the resource name, e.g. pump-ae")
    push.add_argument("--kind", choices=["model", "script"], help="default: from the suffix")
    push.add_argument("--note", default="", help="what changed, for the history")
    ls = lv.add_parser("list", help="every resource: latest version, versions, kind, size")
    ls.add_argument("--kind", choices=["model", "script"])
    show = lv.add_parser("show", help="one version: signature, features, train stats, digest")
    show.add_argument("ref", help="NAME (the latest) or NAME@N")
    pull = lv.add_parser("pull", help="download one version (digest verified)")
    pull.add_argument("ref")
    pull.add_argument("-o", "--output", type=Path, help="file to write (default: NAME@N.onnx)")
    arch = lv.add_parser("archive", help="no new flow version may use NAME@N")
    arch.add_argument("ref")
    rm = lv.add_parser("delete", help="remove NAME@N (only when no flow version pins it)")
    rm.add_argument("ref")
    for sp in (push, ls, show, pull, arch, rm):
        _common(sp)

    flow = nouns.add_parser("flow", help="versioned flows")
    fv = flow.add_subparsers(dest="verb", required=True)
    fpush = fv.add_parser("push", help="store FLOW.yaml as NAME@N, library references pinned")
    fpush.add_argument("file", type=Path)
    fpush.add_argument("--note", default="", help="what changed, for the history")
    fls = fv.add_parser("list", help="every flow: latest version, versions, model")
    fshow = fv.add_parser("show", help="one flow version: pins, text")
    fshow.add_argument("ref", help="NAME (the latest) or NAME@N")
    fhist = fv.add_parser("history", help="the versions of a flow: when, who, note, model")
    fhist.add_argument("name")
    fdiff = fv.add_parser(
        "diff", help="what changed between two flow versions: file, model, scripts"
    )
    fdiff.add_argument("a", help="NAME@A")
    fdiff.add_argument("b", help="NAME@B (or NAME for the latest)")
    for sp in (fpush, fls, fshow, fhist, fdiff):
        _common(sp)
    from edgefleet.fleet import nodes_cli, shadow_cli  # they use this module's helpers

    nodes_cli.add_parsers(nouns, _common)
    shadow_cli.add_parsers(nouns, _common)
    from edgefleet.fleet import debug_cli

    debug_cli.add_parsers(nouns, _common)
    return p


# ---------------------------------------------------------------------------- formatting


def when(text: str) -> str:
    """An ISO time as local time to the minute, as a table shows it."""
    return datetime.fromisoformat(text).astimezone().strftime("%Y-%m-%d %H:%M")


def size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def table(*columns: str) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for c in columns:
        t.add_column(c.upper())
    return t


@contextlib.contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    if total <= PROGRESS_ABOVE or not sys.stderr.isatty():
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


# ---------------------------------------------------------------------------- library


def prepare(args: argparse.Namespace) -> None:
    """Local checks and reads, before any connection: bad usage exits 2 at once."""
    if (args.noun, args.verb) == ("library", "push"):
        path: Path = args.file
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        args.kind = args.kind or KIND_BY_SUFFIX.get(path.suffix.lower())
        if args.kind is None:
            raise UsageError(f"{path}: cannot tell model from script by its suffix: give --kind")
        args.size = path.stat().st_size
    elif (args.noun, args.verb) == ("flow", "push"):
        try:
            args.text = args.file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{args.file}: cannot read it: {exc}") from None
    elif (args.noun, args.verb) == ("library", "pull"):
        args.output_dir = args.output is not None and args.output.is_dir()


async def library_push(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    with progress_bar(args.size, f"push {args.name}") as advance:
        result = await fleet.push(args.file, args.name, args.kind, args.note, advance)
    if not args.json:
        r = result["resource"]
        verb = "pushed" if result["created"] else "unchanged (same bytes):"
        out.print(f"{verb} {r['ref']}  {r['kind']}  {size(r['size'])}  sha256:{r['sha256'][:12]}")
    return result


async def library_list(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    result = await fleet.call("library.list", {"kind": args.kind} if args.kind else {})
    if not args.json:
        if not result["resources"]:
            out.print("the library is empty: edgefleet library push FILE --name NAME")
            return result
        t = table("name", "latest", "versions", "kind", "size", "created", "deployed")
        for r in result["resources"]:
            t.add_row(
                r["name"],
                str(r["latest"]),
                str(r["versions"]),
                r["kind"],
                size(r["size"]),
                when(r["created"]),
                ", ".join(r["deployed"]),
            )
        out.print(t)
    return result


def _shape(shape: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _print_signature(sig: dict[str, Any]) -> None:
    t = table("", "name", "dtype", "shape")
    for role in ("inputs", "outputs"):
        for s in sig.get(role, []):
            t.add_row(role[:-1], s["name"], s["dtype"], _shape(s.get("shape", [])))
    out.print(t)
    opset = ", ".join(f"{k} {v}" for k, v in sig.get("opset", {}).items())
    producer = f"{sig.get('producer_name', '')} {sig.get('producer_version', '')}".strip()
    out.print(f"opset:     {opset}")
    out.print(f"producer:  {producer or '-'}")
    if sig.get("features") is not None:
        out.print(f"features:  {', '.join(sig['features'])}")
    if sig.get("threshold") is not None:
        out.print(f"threshold: {sig['threshold']}")
    stats = sig.get("train_stats")
    if stats:
        st = table("feature", "mean", "std", "min", "max")
        for name, s in stats.items():
            st.add_row(name, *(_num(s.get(k)) for k in ("mean", "std", "min", "max")))
        out.print("train stats:")
        out.print(st)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


async def library_show(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    result = await fleet.call("library.show", {"ref": args.ref})
    if args.json:
        return result
    r = result["resource"]
    out.print(f"[bold]{r['ref']}[/bold]  {r['kind']}  {size(r['size'])}")
    out.print(f"sha256:    {r['sha256']}")
    out.print(f"created:   {when(r['created'])} by {r['author'] or '-'}")
    out.print(f"note:      {r['note'] or '-'}")
    if r["archived"]:
        out.print(f"archived:  {when(r['archived'])} by {r['archived_by'] or '-'}")
    out.print(f"used by:   {', '.join(r['used_by']) or '-'}")
    if r["kind"] == "model":
        _print_signature(r["signature"])
    else:
        out.print(f"defines:   {', '.join(r['signature'].get('functions', []))}")
        out.print(f"imports:   {', '.join(r['signature'].get('imports', [])) or '-'}")
    t = table("version", "created", "author", "size", "sha256", "note")
    for v in result["versions"]:
        note = v["note"] + (" (archived)" if v["archived"] else "")
        t.add_row(
            str(v["version"]), when(v["created"]), v["author"], size(v["size"]),
            v["sha256"][:12], note,
        )  # fmt: skip
    out.print("versions:")
    out.print(t)
    return result


async def library_pull(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    info = await fleet.call("library.show", {"ref": args.ref})
    r = info["resource"]
    name = f"{r['ref']}{'.onnx' if r['kind'] == 'model' else '.py'}"
    dest: Path = args.output / name if args.output_dir else args.output or Path(name)
    with progress_bar(r["size"], f"pull {r['ref']}") as advance:
        result = await fleet.pull(r["ref"], dest, advance)
    result = {**result, "path": str(dest)}
    result.pop("url", None)
    if not args.json:
        out.print(f"pulled {r['ref']} to {dest}  {size(r['size'])}  sha256 verified")
    return result


async def library_archive(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    result = await fleet.call("library.archive", {"ref": args.ref, "author": author()})
    if not args.json:
        out.print(f"archived {result['resource']['ref']}: no new flow version may use it")
    return result


async def library_delete(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    result = await fleet.call("library.delete", {"ref": args.ref})
    if not args.json:
        extra = "" if result["blob_removed"] else " (its bytes stay: another version has them)"
        out.print(f"deleted {result['ref']}{extra}")
    return result


# ---------------------------------------------------------------------------- flows


async def flow_push(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    result = await fleet.call(
        "flow.push",
        {"text": args.text, "filename": args.file.name, "note": args.note, "author": author()},
        timeout=max(args.timeout, 120.0),
    )
    if not args.json:
        f = result["flow"]
        verb = "pushed" if result["created"] else "unchanged (same file and pins):"
        pins = "  ".join(f"{role} {p['ref']}" for role, p in f["pins"].items())
        out.print(f"{verb} {f['ref']}  {pins}".rstrip())
    return result


async def flow_list(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    result = await fleet.call("flow.list")
    if not args.json:
        if not result["flows"]:
            out.print("no flows yet: edgefleet flow push FLOW.yaml")
            return result
        t = table("name", "latest", "versions", "model", "created", "deployed")
        for f in result["flows"]:
            t.add_row(
                f["name"], str(f["latest"]), str(f["versions"]), f["model"] or "-",
                when(f["created"]), ", ".join(f["deployed"]),
            )  # fmt: skip
        out.print(t)
    return result


async def flow_show(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    result = await fleet.call("flow.show", {"ref": args.ref})
    if not args.json:
        f = result["flow"]
        out.print(f"[bold]{f['ref']}[/bold]  created {when(f['created'])} by {f['author'] or '-'}")
        out.print(f"note:    {f['note'] or '-'}")
        for role, p in f["pins"].items():
            out.print(f"{role + ':':<12} {p['ref']}  sha256:{p['sha256'][:12]}")
        out.print("---")
        out.print(f["text"].rstrip("\n"), markup=False)
    return result


async def flow_history(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    result = await fleet.call("flow.history", {"name": args.name})
    if not args.json:
        t = table("version", "created", "author", "model", "note")
        for v in result["versions"]:
            t.add_row(
                str(v["version"]), when(v["created"]), v["author"], v["model"] or "-", v["note"]
            )
        out.print(t)
    return result


async def flow_diff(fleet: FleetClient, args: argparse.Namespace) -> dict[str, Any]:
    a, b = args.a, args.b
    if "@" not in b:  # NAME alone: its latest version
        b = (await fleet.call("flow.show", {"ref": b}))["flow"]["ref"]
    result = await fleet.call("flow.diff", {"a": a, "b": b})
    if not args.json:
        diff = FlowDiff.model_validate(result["diff"])
        if not diff.changed:
            out.print(f"{result['a']} and {result['b']} are the same")
        else:
            out.print(render_diff(diff))
    return result


VERBS: dict[tuple[str, str], Callable[[FleetClient, argparse.Namespace], Awaitable[Any]]] = {
    ("library", "push"): library_push,
    ("library", "list"): library_list,
    ("library", "show"): library_show,
    ("library", "pull"): library_pull,
    ("library", "archive"): library_archive,
    ("library", "delete"): library_delete,
    ("flow", "push"): flow_push,
    ("flow", "list"): flow_list,
    ("flow", "show"): flow_show,
    ("flow", "history"): flow_history,
    ("flow", "diff"): flow_diff,
}


async def run(args: argparse.Namespace) -> None:
    from edgefleet.fleet import debug_cli, nodes_cli, shadow_cli

    verbs = {**VERBS, **nodes_cli.VERBS, **debug_cli.VERBS, **shadow_cli.VERBS}
    verb = verbs[(args.noun, args.verb)]
    async with connect(fleet_of(args), args.prefix, timeout=args.timeout) as fleet:
        result = await verb(fleet, args)
    if args.json:
        print_json(result)


@cli_errors("edgefleet")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    prepare(args)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        if (args.noun, args.verb) == ("debug", "watch"):
            return OK  # Ctrl-C is how a watch ends; the session was closed on the way out
        err.print("edgefleet: interrupted; nothing was committed by this command unless it said so")
        return INTERRUPTED
    return OK
