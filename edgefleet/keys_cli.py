"""`edgefleet keys create|show`: the fleet's Ed25519 signing key.

    edgefleet keys create --out fleet.key    # the private key (mode 0600); prints the public key
    edgefleet keys show fleet.key            # prints the public key and its id
    edgefleet keys rotate /etc/edgefleet/fleet-2.key   # the fleet moves every node to that key
    edgefleet keys status                    # the signing key, the rotation's phase per node

A site trusts the public key by listing it in site.yaml (`fleet.trusted_keys`); a rotation
(edgefleet/fleet/rotation.py) tells every node, under the old key, to trust the new one, then
switches, then retires the old key. `rotate` names the new key's path on the fleet's host (make
it there with `keys create`). Exit codes: edgefleet/cli_errors.py (0 done, 1 the fleet refused,
2 bad usage or an unreadable key, 3 the fleet cannot be reached).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgefleet.cli_errors import cli_errors
from edgefleet.fleet.address import add_fleet_options
from shared.signing import SigningKey
from shared.topics import DEFAULT_PREFIX


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet keys", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="op", required=True)
    create = sub.add_parser("create", help="make a new signing key")
    create.add_argument("--out", type=Path, required=True, help="the private key file to write")
    create.add_argument("--json", action="store_true", help="print {key_id, public_key}")
    show = sub.add_parser("show", help="print the public key of a signing key")
    show.add_argument("key", type=Path, help="the private key file")
    show.add_argument("--json", action="store_true", help="print {key_id, public_key}")
    rotate = sub.add_parser("rotate", help="move every node to a new signing key")
    rotate.add_argument("new_key", help="the new private key's path on the fleet's host")
    status = sub.add_parser("status", help="the signing key and the latest rotation")
    for sp in (rotate, status):
        add_fleet_options(sp)
        sp.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (ef)")
        sp.add_argument("--timeout", type=float, default=30.0, help="seconds for an answer")
        sp.add_argument("--json", action="store_true", help="print the fleet's answer")
    return p


async def _ask(args: argparse.Namespace, cmd: str, request: dict[str, Any]) -> Any:
    from edgefleet.fleet.address import fleet_of
    from edgefleet.fleet.client import connect

    async with connect(fleet_of(args), args.prefix, timeout=args.timeout) as fleet:
        return await fleet.call(cmd, request)


def _fleet(args: argparse.Namespace) -> int:
    import asyncio

    from edgefleet.fleet.client import author

    cmd, request = (
        ("keys.rotate", {"new_key": args.new_key, "author": author()})
        if args.op == "rotate"
        else ("keys.status", {})
    )
    result = asyncio.run(_ask(args, cmd, request))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"signing key {result['signing_key_id'] or 'none'}")
    r = result["rotation"]
    if r is not None:
        print(f"rotation {r['id']}: {r['old_key_id']} → {r['new_key_id']}, {r['phase']}")
        waiting = [n["site"] for n in r["nodes"] if not n["confirmed"]]
        done = len(r["nodes"]) - len(waiting)
        print(f"  {done} of {len(r['nodes'])} node(s) confirmed this phase")
        if waiting:
            print(f"  waiting for: {', '.join(waiting[:20])}")
    return 0


@cli_errors("edgefleet keys")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.op in ("rotate", "status"):
        return _fleet(args)
    if args.op == "create":
        key = SigningKey.generate()
        key.save(args.out)  # ConfigError when the file exists: exit 2
    else:
        key = SigningKey.load(args.key)
    if args.json:
        print(json.dumps({"key_id": key.public.key_id, "public_key": key.public.text()}))
    else:
        if args.op == "create":
            print(f"wrote {args.out} (keep it secret; it cannot be recovered)")
        print(f"key id      {key.public.key_id}")
        print(f"public key  {key.public.text()}")
    return 0
