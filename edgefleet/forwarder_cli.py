"""`edgefleet forwarder dead-letters list|retry|drop`: messages a sink's receiver refused.

    edgefleet forwarder dead-letters list  (--config FILE | --queue-dir DIR) [--sink S] [--json]
    edgefleet forwarder dead-letters retry (--config FILE | --queue-dir DIR) [--sink S] WHICH
    edgefleet forwarder dead-letters drop  (--config FILE | --queue-dir DIR) [--sink S] WHICH

WHICH is `--id N` (repeated) or `--all`.
Works on the sinks' queue files directly, whether the forwarder runs or not: `retry` puts the
messages back at the head of their queue (a running forwarder sends them within
`timings.status_interval_s`), `drop` deletes them. A site started with `edgefleet up` keeps its
queues in `var/forwarder` next to site.yaml (its `forwarder.queue_dir`). Exit codes
(edgefleet/cli_errors.py): 0 done, 1 nothing matched or a queue file is missing, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgefleet.cli_errors import Failed, UsageError, cli_errors
from services.forwarder import deadletters
from services.forwarder.config import ForwarderConfig
from shared.config import load_config
from shared.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet forwarder dead-letters", description=__doc__.split("\n")[0]
    )
    p.add_argument("op", choices=["list", "retry", "drop"])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the forwarder's config file")
    where.add_argument("--queue-dir", type=Path, help="the forwarder's queue_dir")
    p.add_argument("--sink", help="only this sink (default: every sink)")
    p.add_argument("--id", type=int, action="append", dest="ids", help="a dead letter's id")
    p.add_argument("--all", action="store_true", help="retry or drop every dead letter")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    return p


def queue_files(args: argparse.Namespace) -> dict[str, Path]:
    """Sink name → queue file."""
    if args.config is not None:
        config = load_config(args.config, ForwarderConfig)
        files = {s.name: config.queue_dir / f"{s.name}.db" for s in config.sinks}
    else:
        files = {p.stem: p for p in sorted(args.queue_dir.glob("*.db"))}
    if args.sink is not None:
        if args.sink not in files:
            known = ", ".join(files) or "none"
            raise ConfigError(f"no sink {args.sink!r} (sinks: {known})")
        files = {args.sink: files[args.sink]}
    return files


def table(letters: list[deadletters.DeadLetter]) -> str:
    head = ["SINK", "ID", "TOPIC", "RESULTS", "BYTES", "DEAD SINCE", "ATTEMPTS", "REASON"]
    rows = [
        [
            d.sink,
            str(d.id),
            d.topic,
            str(d.results),
            str(d.bytes),
            d.dead,
            str(d.attempts),
            d.reason,
        ]
        for d in letters
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]])
        for r in [head, *rows]
    )


def run(args: argparse.Namespace) -> int:
    files = queue_files(args)
    if args.op == "list":
        letters = [d for sink, path in files.items() for d in deadletters.listed(sink, path)]
        if args.json:
            print(json.dumps([d.to_json() for d in letters], indent=2))
        elif letters:
            print(table(letters))
        else:
            print("no dead letters")
        return 0
    fn = deadletters.retry if args.op == "retry" else deadletters.drop
    done = {sink: fn(path, None if args.all else args.ids) for sink, path in files.items()}
    if args.json:
        print(json.dumps({"op": args.op, "ids": done}))
    else:
        for sink, ids in done.items():
            if ids:
                verb = "put back in the queue" if args.op == "retry" else "dropped"
                print(f"{sink}: {len(ids)} {verb}: {', '.join(map(str, ids))}")
    if not any(done.values()):
        raise Failed(f"no dead letter matched in {', '.join(files)}")
    return 0


@cli_errors("edgefleet forwarder")
def main(argv: list[str]) -> int:
    if argv[:1] != ["dead-letters"]:
        raise UsageError("usage: edgefleet forwarder dead-letters list|retry|drop …")
    parser = build_parser()
    args = parser.parse_args(argv[1:])  # bad usage: exit 2
    if args.op != "list" and not args.all and not args.ids:
        parser.error(f"{args.op} needs --id N or --all")
    try:
        return run(args)
    except FileNotFoundError as exc:  # nothing to list or retry: the operation found nothing
        raise Failed(f"{exc}; has the forwarder run with this config?") from None
