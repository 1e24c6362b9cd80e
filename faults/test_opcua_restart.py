"""OPC UA server restart: the simulator's asyncua server stopped and started again 50 times
while the adapter is subscribed to it (down a varying moment each time). Figures: silent stalls
(a restart after which no good reading arrives within a deadline), the time from each restart
to the first good reading, and good readings that are not what the server served (goal 0)."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

import numpy as np
import pytest

from edgefleet.sim.plant import PlantSimulator
from faults.conftest import Figure, scaled
from services.opcua.service import main
from shared import codec
from shared.topics import Topics
from tests.helpers import Probe, running
from tests.opcua.conftest import Served, make_config
from tests.opcua.test_adapter import SIGNALS, check_good_were_served, readings

RUN = 20  # good batches (~1 s) between the first after a restart and the next stop
# No good reading this long after a restart is a stall: shorter than the watchdog's stall_after_s
# (30 s), so a subscription that only the watchdog's last resort brings back counts as one.
DEADLINE_S = 10.0
RESTARTS = scaled(50, least=3)


class Batches:
    """The raw batches a probe received on one topic, each decoded once (a scenario sees
    thousands; decoding them all again per arrival is quadratic)."""

    def __init__(self, probe: Probe, topic: str) -> None:
        self.probe, self.topic = probe, topic
        self.decoded: list[dict[str, Any]] = []

    def __call__(self) -> list[dict[str, Any]]:
        messages = self.probe.received(self.topic)
        for m in messages[len(self.decoded) :]:
            self.decoded.append(codec.decode(m.payload, m.content_type))
        return self.decoded

    async def wait(self, after: int, good: bool, timeout: float, count: int = 1) -> int:
        """Wait for `count` batches past index `after` all bad (`good` false) or with a good
        reading; the index of the last."""

        def match(b: dict[str, Any]) -> bool:
            q = np.asarray(b["q"])
            return bool((q == 0).any()) if good else bool((q == 2).all())

        def found() -> int | None:
            hits = [i for i, b in enumerate(self()[after:], after) if match(b)][:count]
            return hits[-1] if len(hits) == count else None

        await self.probe.wait_until(lambda: found() is not None, timeout)
        index = found()
        assert index is not None
        return index


@pytest.mark.timeout(60 + 15 * RESTARTS)  # ~6 s a restart: past the suite's 300 s per test
async def test_opcua_server_restarted_under_subscription(
    base_config: dict[str, Any], probe: Probe, site: str, figure: Figure
) -> None:
    restarts = RESTARTS
    topics = Topics(site)
    raw = topics.raw("opc1")
    await probe.subscribe(raw)
    await probe.subscribe(topics.status("opcua-sim"))
    batches = Batches(probe, raw)
    rng = random.Random(20)
    to_good: list[float] = []  # restart → first good reading, for each restart that resumed
    stalls = 0
    unnoticed = 0  # stops after which the adapter published no bad marker
    async with PlantSimulator(seed=20, modbus=False) as sim:
        assert sim.opcua is not None
        served = Served(sim)
        served.note_now(sim)
        # the shipped watchdog and reconnect timings: the figures a user gets
        endpoint = sim.opcua_endpoint or ""
        cfg = make_config({**base_config, "site": site}, endpoint, SIGNALS, watchdog={})
        async with running(main(cfg)):
            mark = await batches.wait(0, good=True, timeout=30)
            for _ in range(restarts):
                mark = len(batches())
                await sim.opcua.stop()
                try:
                    mark = await batches.wait(mark, good=False, timeout=DEADLINE_S)
                except TimeoutError:
                    unnoticed += 1
                    mark = len(batches())
                # the fault itself: down a varying moment (restarted at once, during the
                # adapter's backoff, or after it)
                await asyncio.sleep(rng.uniform(0, 1.5))
                await sim.opcua.start()
                restarted = time.monotonic()
                try:
                    mark = await batches.wait(mark + 1, good=True, timeout=DEADLINE_S)
                    to_good.append(time.monotonic() - restarted)
                    # data flows again a while before the next restart
                    await batches.wait(mark + 1, good=True, timeout=DEADLINE_S, count=RUN)
                except TimeoutError:
                    stalls += 1
            status = await probe.wait_for(
                topics.status("opcua-sim"),
                lambda s: s["health"]["opcua"]["sessions"] >= restarts + 1 - stalls,
                timeout=30,
            )
    sessions = status[0]["health"]["opcua"]["sessions"]
    good = check_good_were_served(readings(batches()), served)  # asserts every good is served
    p50, worst = statistics.median(to_good), max(to_good)
    ok = stalls == 0 and unnoticed == 0
    figure(
        "OPC UA server restart",
        f"the simulator's asyncua server restarted ×{restarts} under a subscription of 4 "
        f"signals (50 ms publishing), down 0-1.5 s each time; {good:,} good readings",
        f"silent stalls {stalls} (no good reading {DEADLINE_S:g} s after a restart), outages "
        f"not reported {unnoticed}; first good reading {p50:.2f} s after a restart (p50, max "
        f"{worst:.2f} s); wrong values 0; {sessions} sessions",
        ok,
    )
    assert ok, (stalls, unnoticed, to_good)
