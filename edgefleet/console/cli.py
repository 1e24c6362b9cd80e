"""`edgefleet console`: the web console, on the fleet (`--fleet fleet.yaml`) or on one edge
node (`--site site.yaml`); `edgefleet console user add|list|remove` manages who may sign in."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import secrets
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import uvicorn

from edgefleet.cli_errors import Failed, UsageError, cli_errors
from edgefleet.console import assets
from edgefleet.console.app import Console, create_app
from edgefleet.console.backend import Fleet, NoFleet
from edgefleet.console.debugfeed import DebugFeed
from edgefleet.console.live import BrokerFeed, LiveFeed, LiveStore, units_of
from edgefleet.console.users import Role, Users
from edgefleet.fleet.client import connect
from edgefleet.fleet.config import Config as FleetConfig
from edgefleet.site.load import load_site
from shared.config import load_config
from shared.runtime import setup_logging
from shared.topics import Kind, Topics, every_site, fleet_deployments

DEFAULT_STATE = Path("var/console")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet console", description=__doc__)
    p.add_argument("--fleet", type=Path, help="fleet.yaml: the console of the whole fleet")
    p.add_argument("--site", type=Path, help="site.yaml: the console of this edge node only")
    p.add_argument("--listen", default="127.0.0.1:8080", help="host:port (127.0.0.1:8080)")
    p.add_argument(
        "--state", type=Path, default=DEFAULT_STATE, help="users, audit log, session key"
    )
    p.add_argument("--session-s", type=float, default=3600.0, help="idle time before sign-out")
    p.add_argument("--keep-s", type=float, default=600.0, help="live data kept per series")
    p.add_argument(
        "--deployment-poll-s",
        type=float,
        default=15.0,
        help="a deployment page asks again this often besides the pushed updates",
    )
    p.add_argument("--log-level", default="WARNING")
    return p


def user_parser() -> argparse.ArgumentParser:
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state", type=Path, default=DEFAULT_STATE, help="as the console's")
    p = argparse.ArgumentParser(prog="edgefleet console user")
    sub = p.add_subparsers(dest="verb", required=True)
    add = sub.add_parser(
        "add", parents=[state], help="add a user (the password is read from stdin or asked)"
    )
    add.add_argument("name")
    add.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    add.add_argument("--replace", action="store_true", help="set a new password or role")
    sub.add_parser("list", parents=[state])
    rm = sub.add_parser("remove", parents=[state])
    rm.add_argument("name")
    return p


def read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


@cli_errors("edgefleet console user")
def user_main(argv: list[str]) -> int:
    args = user_parser().parse_args(argv)
    users = Users(args.state / "users.db")
    try:
        if args.verb == "add":
            user = users.add(args.name, Role(args.role), read_password(), replace=args.replace)
            print(f"user {user.name} ({user.role}) in {users.path}")
        elif args.verb == "list":
            for u in users.all():
                print(f"{u.name}\t{u.role}")
        elif not users.remove(args.name):
            raise Failed(f"no user {args.name!r}")
    except ValueError as exc:  # a weak password, two that differ, a taken name
        raise UsageError(str(exc)) from None
    return 0


def session_secret(state: Path) -> str:
    """The key session cookies are signed with: made once, kept, readable by its owner only."""
    path = state / "session.key"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def listen_socket(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "127.0.0.1", int(port)))
    return sock


@contextlib.asynccontextmanager
async def sources(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[str, Fleet, LiveFeed, LiveStore, str | None, str]]:
    """The fleet and the live feed of the mode asked for."""
    client_id = f"console-{uuid.uuid4().hex[:8]}"
    if args.site is not None:
        site = load_site(args.site).spec
        topics = Topics(site.site, site.prefix)
        feed = BrokerFeed(
            site.broker.settings(client_id, site.timings),
            [topics.everything()],
            f"site broker {site.broker.host}:{site.broker.port}, {topics.everything()}",
        )
        units = units_of((s.name, s.adapter_keys) for s in site.sources)
        yield "edge", NoFleet(), feed, LiveStore(args.keep_s, units), site.site, site.prefix
        return
    config = load_config(args.fleet, FleetConfig)
    broker = config.broker
    filters = [
        every_site(k, config.prefix)
        for k in (Kind.STATUS, Kind.RESULTS, Kind.SHADOW, Kind.ERRORS, Kind.REPORTED)
    ] + [fleet_deployments(config.prefix)]
    feed = BrokerFeed(
        broker.settings(client_id, config.timings),
        filters,
        f"cloud broker {broker.host}:{broker.port}: statuses and results of every site",
    )
    async with connect(broker, prefix=config.prefix) as fleet:  # its credentials and TLS
        live = DebugFeed(feed, fleet)
        store = LiveStore(args.keep_s)
        store.deployments_topic = fleet_deployments(config.prefix)
        yield "cloud", fleet, live, store, None, config.prefix


async def serve(args: argparse.Namespace, announce: Callable[[str], None] = print) -> None:
    state: Path = args.state
    users = Users(state / "users.db")
    if not users.all():
        announce(
            f"no users yet in {users.path}: add one with "
            f"`edgefleet console user add NAME --role operator --state {state}`"
        )
    uplot = assets.status()
    if not uplot.ok:
        announce(f"warning: {uplot.message}")
    sock = listen_socket(args.listen)
    async with sources(args) as (mode, fleet, feed, store, site, prefix):
        console = Console(
            mode=mode,
            users=users,
            fleet=fleet,
            feed=feed,
            store=store,
            secret=session_secret(state),
            site=site,
            prefix=prefix,
            session_s=args.session_s,
            deployment_poll_s=args.deployment_poll_s,
        )
        app = create_app(console)
        config = uvicorn.Config(
            app,
            log_level=args.log_level.lower(),
            access_log=False,
            timeout_graceful_shutdown=5,  # live streams never end by themselves
        )
        server = uvicorn.Server(config)
        host, port = sock.getsockname()[:2]
        announce(f"console        http://{host}:{port}/  ({mode}: {feed.describe()})")
        await server.serve(sockets=[sock])


@cli_errors("edgefleet console")
def main(argv: list[str]) -> int:
    if argv[:1] == ["user"]:
        return user_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.fleet is None) == (args.site is None):
        parser.error("give one of --fleet fleet.yaml or --site site.yaml")
    setup_logging(args.log_level)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args, lambda text: print(text, flush=True)))
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.listen}: {exc}") from None
    return 0
