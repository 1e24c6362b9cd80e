"""Cost of what the agent checks before it runs anything: the desired state's Ed25519 signature
(canonical JSON + verify, through `DesiredState` parsing) and the sha256 of each blob, per MB.

Raw limits in the same run: the bare Ed25519 verify of the same bytes, and hashlib over bytes in
memory; the agent's figure hashes the blob from a file on disk as `BlobCache.verify` does.

    PYTHONPATH=. .venv/bin/python bench/verify_cost.py [--flows 10] [--mb 100]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.cache import BlobCache
from edgefleet.agent.desired import accept
from shared.messages import DeployedFlow, DesiredState, PinnedResource
from shared.signing import SigningKey, canonical


def per_call_us(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--flows", type=int, default=10)
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()

    key = SigningKey.generate()
    flows = [
        DeployedFlow(
            name=f"flow{i}",
            version=3,
            flow="name: x\n" + "#" * 2000,
            resources=[
                PinnedResource(kind="model", ref=f"m{i}@2", sha256=os.urandom(32).hex(), size=1),
                PinnedResource(kind="script", ref=f"s{i}@1", sha256=os.urandom(32).hex(), size=1),
            ],
        )
        for i in range(args.flows)
    ]
    wire = key.sign(DesiredState(site="plant1", revision=9, flows=flows).to_wire())
    data, sig = canonical(wire), base64.b64decode(wire["signature"]["sig"])
    raw_us = per_call_us(lambda: key.public.verify(sig, data), args.n)
    agent_us = per_call_us(lambda: accept(wire, "plant1", [key.public], 1), args.n)
    print(f"desired state with {args.flows} flows ({len(data)} bytes canonical):")
    print(f"  raw Ed25519 verify      {raw_us:8.1f} µs")
    print(f"  agent accept()          {agent_us:8.1f} µs  ({agent_us / raw_us:.1f}× raw)")

    blob = os.urandom(args.mb << 20)
    start = time.perf_counter()
    sha = hashlib.sha256(blob).hexdigest()
    raw_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        cache = BlobCache(Path(tmp), max_bytes=1 << 40, reserve_bytes=0)
        cache.path(sha).write_bytes(blob)
        start = time.perf_counter()
        cache.verify(sha)
        agent_s = time.perf_counter() - start
    print(f"blob of {args.mb} MB:")
    print(f"  raw sha256 in memory    {raw_s / args.mb * 1000:8.2f} ms/MB")
    print(
        f"  cache verify from disk  {agent_s / args.mb * 1000:8.2f} ms/MB "
        f"({agent_s / raw_s:.2f}× raw)"
    )


if __name__ == "__main__":
    main()
