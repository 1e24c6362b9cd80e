"""The `edgefleet` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from edgefleet.cli_errors import cli_errors
from edgefleet.registry import SERVICES, service_spec
from edgefleet.site.commands import add_commands as add_site_commands
from shared.config import load_config
from shared.mqtt import BrokerSettings
from shared.runtime import setup_logging
from shared.service import RESTART_EXIT_CODE, RestartForConfig


def cmd_run(args: argparse.Namespace) -> int:
    spec = service_spec(args.service)
    config = load_config(args.config, spec.config)
    if spec.check is not None:
        spec.check(config)
    if args.check:
        print(f"{args.config}: valid {args.service} config for instance {config.instance!r}")
        return 0
    setup_logging(config.log_level)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(spec.main(config))
    except RestartForConfig:  # logged by the service; `edgefleet up` restarts it with the config
        return RESTART_EXIT_CODE
    return 0


def cmd_tap(args: argparse.Namespace) -> int:
    from edgefleet.tap import tap

    settings = BrokerSettings(host=args.host, port=args.port, reconnect_max_s=2.0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(tap(args.filter, settings, count=args.count, timeout=args.timeout))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edgefleet.demo import run_demo

    if args.json and args.site:
        print("edgefleet demo: --json is for the fleet story (without --site)", file=sys.stderr)
        return 2
    return int(
        run_demo(
            Path(args.workdir), duration=args.duration, fast=args.fast, site=args.site,
            json=args.json,
        )
    )  # fmt: skip


def cmd_record(args: argparse.Namespace) -> int:
    if args.raw:
        from edgefleet.replay.record_raw import main as raw_main

        setup_logging("WARNING")
        return raw_main(
            args.flow_file,
            args.out,
            args.broker,
            args.site,
            args.duration,
            args.labels,
            args.max_mb,
        )
    from edgefleet.record import main as record_main

    setup_logging("WARNING")
    return record_main(args.flow_file, args.out, args.broker, args.site, args.duration, args.labels)


def cmd_sim(argv: list[str]) -> int:
    from edgefleet.sim.cli import main as sim_main

    return int(sim_main(argv))


def cmd_actuator(argv: list[str]) -> int:
    from edgefleet.actuator_cli import main as actuator_main

    return int(actuator_main(argv))


def cmd_forwarder(argv: list[str]) -> int:
    from edgefleet.forwarder_cli import main as forwarder_main

    return int(forwarder_main(argv))


def cmd_replay(argv: list[str]) -> int:
    from edgefleet.replay.cli import main as replay_main

    return int(replay_main(argv))


def cmd_recording(argv: list[str]) -> int:
    from edgefleet.replay.cli import recording_main

    return int(recording_main(argv))


def cmd_keys(argv: list[str]) -> int:
    from edgefleet.keys_cli import main as keys_main

    return int(keys_main(argv))


def cmd_shadow(argv: list[str]) -> int:
    from edgefleet.shadow_cli import main as shadow_main

    return int(shadow_main(argv))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one service instance")
    run.add_argument("service", help=f"one of: {', '.join(sorted(SERVICES))}")
    run.add_argument("--config", required=True, type=Path, help="the instance's YAML config")
    run.add_argument("--check", action="store_true", help="validate the config and exit")
    run.set_defaults(fn=cmd_run)

    tap = sub.add_parser("tap", help="print messages decoded, one JSON line each")
    tap.add_argument("filter", nargs="?", default="ef/#", help="MQTT topic filter (ef/#)")
    tap.add_argument("--host", default="127.0.0.1")
    tap.add_argument("--port", type=int, default=1883)
    tap.add_argument("--count", type=int, help="stop after this many messages")
    tap.add_argument("--timeout", type=float, help="stop after this many seconds")
    tap.set_defaults(fn=cmd_tap)

    demo = sub.add_parser(
        "demo",
        help="the fleet story: cloud, console, pump stations, a model trained, rolled out, "
        "shadowed, promoted, a broken version rolled back (--site: one site)",
    )
    demo.add_argument("--workdir", default="var/demo", help="where state and logs go")
    demo.add_argument(
        "--fast", action="store_true", help="shorter phases, three stations (CI's form)"
    )
    demo.add_argument(
        "--site", action="store_true", help="the single-site story: one site detecting a fault"
    )
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--json", action="store_true", help="the final summary as JSON")
    demo.set_defaults(fn=cmd_demo)

    rec = sub.add_parser("record", help="record a flow's aligned samples to CSV, for training")
    rec.add_argument("flow_file", type=Path, help="the flow YAML file")
    rec.add_argument("--out", required=True, type=Path, help="CSV file (.parquet with pyarrow)")
    rec.add_argument("--broker", default="127.0.0.1:1883", help="site broker host:port")
    rec.add_argument("--site", default="plant1", help="site id of the raw topics (plant1)")
    rec.add_argument("--duration", type=float, help="stop after this many seconds")
    rec.add_argument("--labels", type=Path, help="labels CSV (edgefleet sim --labels-out)")
    rec.add_argument(
        "--raw",
        action="store_true",
        help="record the flow's raw reading batches as they travelled (Parquet), for replay",
    )
    rec.add_argument("--max-mb", type=float, help="--raw: stop at about this many MB of readings")
    rec.set_defaults(fn=cmd_record)

    add_site_commands(sub)  # up, check, schema

    sub.add_parser("sim", help="run the plant simulator (edgefleet sim --help)", add_help=False)
    sub.add_parser(
        "actuator", help="hold or release an action (edgefleet actuator --help)", add_help=False
    )
    sub.add_parser(
        "replay", help="replay a flow over a recording (edgefleet replay --help)", add_help=False
    )
    sub.add_parser(
        "recording",
        help="convert a CSV to a recording, show one (edgefleet recording --help)",
        add_help=False,
    )
    sub.add_parser("keys", help="the fleet's signing key (edgefleet keys --help)", add_help=False)
    sub.add_parser(
        "site", help="a site's cloud broker credentials (edgefleet site add --help)", add_help=False
    )
    sub.add_parser(
        "forwarder",
        help="list, retry or drop refused messages (edgefleet forwarder dead-letters --help)",
        add_help=False,
    )
    sub.add_parser(
        "shadow",
        help="a shadow model: report or stop it across the fleet (shadow report|stop FLOW), "
        "or promote or drop it on one site (edgefleet shadow --help)",
        add_help=False,
    )
    for name, text in (
        ("library", "models and scripts in the fleet (edgefleet library --help)"),
        ("flow", "versioned flows in the fleet (edgefleet flow --help)"),
        ("node", "edge nodes known to the fleet (edgefleet node --help)"),
        ("group", "named label selectors of nodes (edgefleet group --help)"),
        ("deploy", "deploy flow versions to nodes (edgefleet deploy --help)"),
        ("deployment", "deployments and their state per node (edgefleet deployment --help)"),
        ("rollback", "deploy an earlier flow version where it runs (edgefleet rollback --help)"),
        ("promote", "make a flow's shadow model live across the fleet (edgefleet promote --help)"),
        ("debug", "a node's site topics seen from here, for a while (edgefleet debug --help)"),
        ("cloud", "the cloud side on this machine (edgefleet cloud up --help)"),
        ("console", "the web console (edgefleet console --help)"),
    ):
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:
        return cmd_sim(argv[1:])
    if argv[:1] == ["actuator"]:
        return cmd_actuator(argv[1:])
    if argv[:1] == ["forwarder"]:
        return cmd_forwarder(argv[1:])
    if argv[:1] == ["shadow"] and argv[1:2] not in (["report"], ["stop"]):
        return cmd_shadow(argv[1:])  # on one site: promote | drop --site S --instance I
    if argv[:1] in (["library"], ["flow"], ["node"], ["group"], ["deploy"], ["deployment"],
                    ["rollback"], ["debug"], ["shadow"], ["promote"]):  # fmt: skip
        from edgefleet.fleet.cli import main as fleet_main

        return fleet_main(argv)
    if argv[:1] == ["console"]:
        from edgefleet.console.cli import main as console_main

        return console_main(argv[1:])
    if argv[:1] == ["cloud"]:
        from edgefleet.fleet.cloud import main as cloud_main

        return cloud_main(argv[1:])
    if argv[:1] == ["keys"]:
        return cmd_keys(argv[1:])
    if argv[:1] == ["site"]:
        from edgefleet.cloud_auth import main as site_main

        return int(site_main(argv[1:]))
    if argv[:1] == ["replay"]:
        return cmd_replay(argv[1:])
    if argv[:1] == ["recording"]:
        return cmd_recording(argv[1:])
    if argv[:2] == ["opcua", "browse"]:
        from edgefleet.opcua_browse import main as browse_main

        return browse_main(argv[2:])
    return run_parsed(parser().parse_args(argv))


@cli_errors("edgefleet")
def run_parsed(args: argparse.Namespace) -> int:
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
