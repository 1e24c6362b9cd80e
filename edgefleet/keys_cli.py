"""`edgefleet keys create|show`: the fleet's Ed25519 signing key.

    edgefleet keys create --out fleet.key    # the private key (mode 0600); prints the public key
    edgefleet keys show fleet.key            # prints the public key and its id

A site trusts the public key by listing it in site.yaml (`fleet.trusted_keys`); two trusted keys
at once allow a rotation. Exit status 0 on success, 2 on bad usage or an unreadable key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.errors import ConfigError
from shared.signing import SigningKey


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet keys", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="op", required=True)
    create = sub.add_parser("create", help="make a new signing key")
    create.add_argument("--out", type=Path, required=True, help="the private key file to write")
    create.add_argument("--json", action="store_true", help="print {key_id, public_key}")
    show = sub.add_parser("show", help="print the public key of a signing key")
    show.add_argument("key", type=Path, help="the private key file")
    show.add_argument("--json", action="store_true", help="print {key_id, public_key}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.op == "create":
            key = SigningKey.generate()
            key.save(args.out)
        else:
            key = SigningKey.load(args.key)
    except ConfigError as exc:
        print(f"edgefleet keys: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"key_id": key.public.key_id, "public_key": key.public.text()}))
    else:
        if args.op == "create":
            print(f"wrote {args.out} (keep it secret; it cannot be recovered)")
        print(f"key id      {key.public.key_id}")
        print(f"public key  {key.public.text()}")
    return 0
