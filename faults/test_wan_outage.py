"""WAN outage: the link to the cloud broker goes dead (a half-open link: a proxy that passes
nothing and closes nothing) under a steady 1,000 results/s, for a compressed hour, then passes
again. Figure: results lost, results delivered more than once, the time to the first delivery
after the return and the drain rate against the load's rate."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from edgefleet.broker import LocalBroker
from faults.conftest import Figure, ResultIds, scaled
from services.forwarder.service import main
from shared.topics import Kind, Topics
from tests.forwarder.conftest import result_ids, results, unique
from tests.forwarder.test_delivery import FAST, forwarder_config, sink_health
from tests.helpers import FreezableProxy, Probe, running, until

PER_BATCH = 10
RATE = 1000  # results/s, the load the issue names


class Arrived:
    """The distinct ids that reached the cloud, kept as a set grown once per new id (the figures
    need `how many of these arrived` polled over hundreds of thousands of ids)."""

    def __init__(self, ids: ResultIds) -> None:
        self.ids, self.seen, self._read = ids, set[str](), 0

    def __call__(self) -> set[str]:
        got = self.ids()
        self.seen.update(got[self._read :])
        self._read = len(got)
        return self.seen


async def next_status(probe: Probe, topic: str, predicate: Any, timeout: float) -> Any:
    """The first status published from now on that satisfies `predicate` (`wait_for` also
    returns the ones already received)."""
    already = sum(1 for d in probe.decoded(topic) if predicate(d))
    return (await probe.wait_for(topic, predicate, timeout=timeout, count=already + 1))[-1]


async def test_wan_outage_loses_nothing_and_drains(
    base_config: dict[str, Any],
    tmp_path: Path,
    site: str,
    probe: Probe,
    cloud: LocalBroker,
    figure: Figure,
) -> None:
    outage_s = scaled(240, least=10)  # the hour compressed: its length in results, not in time
    topics = Topics(site)
    status = topics.status("fwd")
    await probe.subscribe(status)
    durable = {"client_id": f"{site}-cloud-probe", "clean_start": False, "session_expiry_s": 3600}
    sent = 0
    stop = asyncio.Event()

    async def load() -> None:  # RATE results/s as batches, paced on the clock, not on sleeps
        nonlocal sent
        began = time.monotonic()
        while not stop.is_set():
            while sent < (time.monotonic() - began) * RATE:
                await probe.publish(topics.results("pump"), results("pump", sent, PER_BATCH), qos=1)
                sent += PER_BATCH
            await asyncio.sleep(PER_BATCH / RATE)

    async with (
        FreezableProxy(cloud.host, cloud.port) as link,
        Probe(cloud.host, cloud.port, **durable) as remote,
    ):
        await remote.subscribe(topics.all_of(Kind.RESULTS))
        # keep-alive at its least (5 s): the forwarder notices the dead link within ~1.5 of it
        broker = {"port": link.port, "keepalive_s": 5}
        sinks = [{"kind": "mqtt", "name": "cloud", "broker": broker, **FAST}]
        arrived = Arrived(ResultIds(remote, topics.results("pump")))
        async with running(main(forwarder_config(base_config, tmp_path, sinks))):
            await probe.wait_for(status, lambda s: s["state"] == "online")
            flow = asyncio.create_task(load())
            loaded = time.monotonic()
            try:
                await until(lambda: len(arrived()) >= RATE, timeout=60, interval=0.1)
                link.freeze()
                cut, tries = time.monotonic(), link.connections
                dead = sink_health("cloud", lambda h: not h["connected"])
                await next_status(probe, status, dead, timeout=60)
                noticed_s = time.monotonic() - cut
                # the outage itself: its length is the scenario, not a wait for something
                await asyncio.sleep(max(0.0, outage_s - noticed_s))
                before = sent
                st = await next_status(probe, status, sink_health("cloud", bool), timeout=30)
                backlog = st["health"]["sink_cloud"]["queued_results"]
                at_return = len(arrived())
                tries = link.connections - tries  # reconnects tried into the dead link
                link.thaw()
                back = time.monotonic()
                await until(lambda: len(arrived()) > at_return, timeout=120, interval=0.05)
                first_s = time.monotonic() - back
                due = set(result_ids("pump", 0, before))
                with contextlib.suppress(TimeoutError):  # what never came is the figure
                    await until(lambda: arrived() >= due, timeout=600, interval=0.05)
                drain_s = time.monotonic() - back
                drained = len(arrived()) - at_return
            finally:
                stop.set()
                await flow
            load_rate = sent / (time.monotonic() - loaded)
            expected = set(result_ids("pump", 0, sent))
            with contextlib.suppress(TimeoutError):
                await until(lambda: arrived() >= expected, timeout=120, interval=0.2)
    ids = arrived.ids()
    lost = len(expected - set(ids))
    duplicated = len(ids) - len(unique(ids))
    ok = lost == 0
    figure(
        "WAN outage",
        f"the cloud link dead (half-open: nothing passes, nothing closes) for {outage_s} s "
        f"under {RATE:,} results/s as batches of {PER_BATCH} ({before - at_return:,} results "
        f"held), then passing again; {sent:,} results in all",
        f"lost {lost}, duplicated {duplicated:,} (ids delivered more than once); dead link "
        f"noticed after {noticed_s:.1f} s, {tries} reconnects tried into it; first delivery "
        f"{first_s:.2f} s after the return; "
        f"drained {drained:,} results in {drain_s:.1f} s ({drained / drain_s:,.0f}/s, "
        f"{drained / drain_s / load_rate:.1f}× the load's {load_rate:,.0f}/s; {backlog:,} "
        "queued in the forwarder at the return)",
        ok,
    )
    assert ok
