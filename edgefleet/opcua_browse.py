"""`edgefleet opcua browse ENDPOINT [NODE]`: walk an OPC UA address space and print what a signal
list needs: node id, browse name, node class, data type and access level of each node.

    edgefleet opcua browse opc.tcp://127.0.0.1:4840/edgefleet/sim
    edgefleet opcua browse opc.tcp://plc:4840 "ns=3;s=Line1" --depth 2 --signals

Without NODE it starts at the Objects folder and skips the server's own diagnostics (namespace 0)
unless `--all`. `--signals` prints the readable variables as YAML entries for the adapter config.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from typing import TextIO

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds

from edgefleet.cli_errors import Failed, cli_errors
from shared.errors import ProtocolError

ACCESS = {1: "read", 2: "write"}
NUMERIC = {
    "Boolean",
    "SByte",
    "Byte",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Float",
    "Double",
}


@dataclass
class Row:
    depth: int
    node_id: str
    browse_name: str
    node_class: str
    data_type: str = ""
    access: str = ""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet opcua browse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("endpoint", help="opc.tcp://host:port/path")
    p.add_argument("node", nargs="?", help="node id to start from (default: the Objects folder)")
    p.add_argument("--depth", type=int, default=8, help="levels below the start node (8)")
    p.add_argument("--max-nodes", type=int, default=5000, help="stop after this many nodes")
    p.add_argument("--all", action="store_true", help="include namespace 0 (server diagnostics)")
    p.add_argument("--signals", action="store_true", help="print variables as adapter signals")
    p.add_argument("--user", help="user name")
    p.add_argument("--password-env", help="environment variable that holds the password")
    p.add_argument("--security", help="Policy,Mode,cert,key[,server_cert] (asyncua's format)")
    p.add_argument("--timeout", type=float, default=5.0)
    return p


async def _data_type(client: Client, dt: ua.NodeId, names: dict[ua.NodeId, str]) -> str:
    if dt not in names:
        if dt.NamespaceIndex == 0 and isinstance(dt.Identifier, int):
            names[dt] = ObjectIdNames.get(dt.Identifier, str(dt.Identifier))
        else:
            names[dt] = (await client.get_node(dt).read_browse_name()).Name
    return names[dt]


def _access(level: int) -> str:
    return "/".join(text for bit, text in ACCESS.items() if level & bit) or "none"


async def walk(client: Client, start: Node, depth: int, max_nodes: int, all_ns: bool) -> list[Row]:
    rows: list[Row] = []
    types: dict[ua.NodeId, str] = {}
    seen: set[ua.NodeId] = {start.nodeid}
    stack: list[tuple[Node, int]] = [(start, 0)]
    while stack and len(rows) < max_nodes:
        node, level = stack.pop()
        refs = await node.get_children_descriptions()
        children = []
        for ref in refs:
            nid = ref.NodeId
            if nid in seen or (not all_ns and level == 0 and nid.NamespaceIndex == 0):
                continue
            seen.add(nid)
            row = Row(level + 1, nid.to_string(), ref.BrowseName.to_string(), ref.NodeClass.name)
            if ref.NodeClass == ua.NodeClass.Variable:
                child = client.get_node(nid)
                dt, al = await child.read_attributes(
                    [AttributeIds.DataType, AttributeIds.UserAccessLevel]
                )
                if dt.Value is not None and dt.Value.Value is not None:
                    row.data_type = await _data_type(client, dt.Value.Value, types)
                if al.Value is not None and al.Value.Value is not None:
                    row.access = _access(int(al.Value.Value))
            rows.append(row)
            if level + 1 < depth:
                children.append((client.get_node(nid), level + 1))
        stack.extend(reversed(children))
    return rows


def print_rows(rows: list[Row], out: TextIO) -> None:
    width = max((len(r.node_id) + 2 * r.depth for r in rows), default=10)
    name_w = max((len(r.browse_name) for r in rows), default=10)
    print(
        f"{'node id':<{width}}  {'browse name':<{name_w}}  class     data type     access", file=out
    )
    for r in rows:
        nid = "  " * (r.depth - 1) + r.node_id
        print(
            f"{nid:<{width}}  {r.browse_name:<{name_w}}  {r.node_class:<8}  "
            f"{r.data_type:<12}  {r.access}".rstrip(),
            file=out,
        )


def print_signals(rows: list[Row], out: TextIO) -> None:
    print("signals:", file=out)
    for r in rows:
        if r.node_class != "Variable" or "read" not in r.access:
            continue
        if r.data_type not in NUMERIC:
            print(f'  # not a number: "{r.node_id}" ({r.data_type})', file=out)
            continue
        name = r.browse_name.split(":", 1)[-1].replace("/", "_").replace(" ", "_")
        writable = ", writable: true" if "write" in r.access else ""
        print(f'  - {{name: {name}, node: "{r.node_id}"{writable}}}  # {r.data_type}', file=out)


async def browse(args: argparse.Namespace, out: TextIO) -> int:
    client = Client(args.endpoint, timeout=args.timeout)
    if args.user:
        client.set_user(args.user)
        if args.password_env:
            client.set_password(os.environ[args.password_env])
    if args.security:
        await client.set_security_string(args.security)
    async with client:
        start = (
            client.get_node(args.node) if args.node else client.get_node(ObjectIds.ObjectsFolder)
        )
        rows = await walk(client, start, args.depth, args.max_nodes, args.all or bool(args.node))
    (print_signals if args.signals else print_rows)(rows, out)
    if len(rows) >= args.max_nodes:
        print(f"# stopped after {args.max_nodes} nodes (--max-nodes)", file=out)
    return 0


@cli_errors("edgefleet opcua browse")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(browse(args, sys.stdout))
    except (OSError, TimeoutError) as exc:  # the server cannot be reached: 3
        raise ProtocolError(f"{args.endpoint}: {exc or type(exc).__name__}") from None
    except ua.UaError as exc:  # type: ignore[attr-defined]  # the server said no (an unknown node): 1
        raise Failed(f"{args.endpoint}: {exc or type(exc).__name__}") from None


if __name__ == "__main__":
    sys.exit(main())
