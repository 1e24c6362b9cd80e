"""A debug session's latency: a message published on the site broker → its copy on the cloud
broker, through the agent (its own connection, the throttle, the re-publish) and a real
mosquitto bridge written by `bridge_config`, against the raw limit: the same publish → receive
on the site broker alone, by the same client, in the same run.

The messages come one at a time, slower than the session's rate, so each goes out at once (a
message within an interval waits for its end by design: that wait is not latency). The session
request is signed and published here as the fleet would (no fleet service: it is not on this
path).

    PYTHONPATH=. .venv/bin/python bench/debug_latency.py [--messages 200]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml

from edgefleet.broker import LocalBroker, bridge_config
from edgefleet.site.load import load_site
from edgefleet.site.supervisor import SiteSupervisor
from shared.messages import DebugSession, now_ns
from shared.signing import SigningKey
from shared.topics import Topics
from tests.helpers import Probe

SITE = "bench"
GAP_S = 0.12  # between messages: below the session's 10 Hz, so none waits for its interval


def line(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p99 = ms[max(0, int(len(ms) * 0.99) - 1)]
    p50 = statistics.median(ms)
    return f"{name:<38} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  max {ms[-1]:6.2f} ms"


async def timed(
    count: int, send: Callable[[int], Awaitable[object]], got: Callable[[], int], probe: Probe
) -> list[float]:
    out = []
    for n in range(count):
        before = got()
        t0 = time.perf_counter()
        await send(n)
        await probe.wait_until(lambda before=before: got() > before, 10)  # type: ignore[misc]
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(GAP_S)
    return out


async def run(count: int, tmp: Path) -> None:
    key = SigningKey.generate()
    t = Topics(SITE)
    cloud = LocalBroker(tmp / "cloud").start()
    bridge = bridge_config(SITE, f"{cloud.host}:{cloud.port}")
    site = LocalBroker(tmp / "site", extra_config=bridge).start()
    spec = {
        "site": SITE,
        "broker": {"host": site.host, "port": site.port},
        "fleet": {"trusted_keys": [key.public.text()]},
    }
    (tmp / "site.yaml").write_text(yaml.safe_dump(spec))
    try:
        async with (
            SiteSupervisor(load_site(tmp / "site.yaml"), tmp / "work"),
            Probe(site.host, site.port) as local,
            Probe(cloud.host, cloud.port) as remote,
        ):
            await local.subscribe(t.samples("raw"))
            raw = await timed(
                count,
                lambda n: local.publish(t.samples("raw"), {"n": n}),
                lambda: len(local.received(t.samples("raw"))),
                local,
            )
            await remote.subscribe(f"ef/{SITE}/debug/#")
            request = DebugSession(
                site=SITE,
                session="bench1",
                topics=[t.samples("pump")],
                rate_hz=10,
                expires=now_ns() + 600 * 10**9,
            )
            await remote.publish(
                t.debug_session("bench1"), key.sign(request.to_wire()), qos=1, retain=True,
                expiry_s=600,
            )  # fmt: skip
            await remote.wait_for(t.debug_state("bench1"), lambda s: s["state"] == "open", 30)
            data = f"ef/{SITE}/debug/data/bench1/#"
            debug = await timed(
                count,
                lambda n: local.publish(t.samples("pump"), {"n": n}),
                lambda: len(remote.received(data)),
                remote,
            )
    finally:
        site.stop()
        cloud.stop()
    print(line("raw: site broker → same client", raw))
    print(line("debug: site → agent → bridge → cloud", debug))
    print(f"ratio p50 {statistics.median(debug) / statistics.median(raw):.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="debug-latency-"))
    try:
        asyncio.run(run(args.messages, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
