"""`edgefleet up`, `check`, `schema` and `metrics` (wired into edgefleet/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.cli_errors import USAGE, Failed

if TYPE_CHECKING:
    from edgefleet.site.supervisor import StatusChange

# The site modules import every service's config model; they are imported inside the commands
# so that `edgefleet run` (every service process) does not pay for them at start.

SCHEMA_BASE = "https://edgefleet.dev/schema"


def cmd_up(args: argparse.Namespace) -> int:
    from edgefleet.site.load import check_site
    from edgefleet.site.sitebroker import BrokerStartError
    from edgefleet.site.supervisor import run_site

    errors = check_site(Path(args.site))
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return USAGE

    def show(change: StatusChange) -> None:
        print(change.line(), flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"edgefleet up {args.site}: workdir {args.workdir}; Ctrl-C stops the site", flush=True
        )
        only = [n for part in args.only or [] for n in part.split(",") if n] or None
        await run_site(Path(args.site), Path(args.workdir), stop, on_status=show, only=only)
        print("edgefleet up: every instance stopped", flush=True)

    try:
        asyncio.run(main())
    except BrokerStartError as exc:  # e.g. the broker's port taken at start
        raise Failed(str(exc)) from None
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from edgefleet.site.load import check_site
    from edgefleet.site.metrics import run_exporter
    from shared.runtime import setup_logging

    errors = check_site(Path(args.site))
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return USAGE

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_exporter(Path(args.site), stop, port=args.port)

    setup_logging("INFO")
    asyncio.run(main())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from edgefleet.site.load import check_site

    errors = check_site(Path(args.site))
    if errors:
        print("\n".join(errors), file=sys.stderr)
        print(f"{args.site}: {len(errors)} error(s)", file=sys.stderr)
        return USAGE
    print(f"{args.site}: valid (site, flows and every instance config)")
    return 0


def site_schema() -> dict[str, Any]:
    """The JSON Schema of site.yaml; each source kind lists its adapter's keys."""
    from edgefleet.site.model import SiteSpec, source_models

    schema = SiteSpec.model_json_schema()
    defs = schema.setdefault("$defs", {})
    variants = []
    for model in source_models().values():
        sub = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[model.__name__] = sub
        variants.append({"$ref": f"#/$defs/{model.__name__}"})
    schema["properties"]["sources"]["items"] = {"oneOf": variants} if variants else {}
    defs.pop("SourceSpec", None)
    mqtt_input = defs.get("Input", {})
    if "source" in mqtt_input.get("required", []):  # in a site, it defaults to the source's name
        mqtt_input["required"].remove("source")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"{SCHEMA_BASE}/site.schema.json"
    return schema


def flow_schema() -> dict[str, Any]:
    from edgefleet.flow import FlowSpec

    schema = FlowSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"{SCHEMA_BASE}/flow.schema.json"
    return schema


def schemas() -> dict[str, str]:
    """File name -> JSON text of every published schema."""
    return {
        "site.schema.json": json.dumps(site_schema(), indent=2, sort_keys=True) + "\n",
        "flow.schema.json": json.dumps(flow_schema(), indent=2, sort_keys=True) + "\n",
    }


def cmd_schema(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in schemas().items():
        (out / name).write_text(text)
        print(out / name)
    return 0


def add_commands(sub: Any) -> None:
    """Add `up`, `metrics`, `check` and `schema` to the `edgefleet` subcommands."""
    up = sub.add_parser("up", help="run every service of a site.yaml, restarting what dies")
    up.add_argument("site", type=Path, help="the site.yaml")
    up.add_argument("--workdir", default="var/site", help="instance configs, logs, broker data")
    up.add_argument(
        "--only",
        action="append",
        metavar="INSTANCE",
        help="run just these instances (repeat or comma-separate); one per container in compose",
    )
    up.set_defaults(fn=cmd_up)

    metrics = sub.add_parser(
        "metrics",
        help="serve a site's Prometheus /metrics from its statuses (its services run elsewhere)",
    )
    metrics.add_argument("site", type=Path, help="the site.yaml")
    metrics.add_argument(
        "--port", type=int, help="instead of site.yaml's metrics.port (default 9720)"
    )
    metrics.set_defaults(fn=cmd_metrics)

    check = sub.add_parser("check", help="validate a site.yaml, its flows and instance configs")
    check.add_argument("site", type=Path, help="the site.yaml")
    check.set_defaults(fn=cmd_check)

    schema = sub.add_parser("schema", help="write the JSON Schemas of site.yaml and flow files")
    schema.add_argument("--out", default="docs/schema", help="folder (docs/schema)")
    schema.set_defaults(fn=cmd_schema)


__all__ = ["add_commands"]
