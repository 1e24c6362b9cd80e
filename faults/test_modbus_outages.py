"""Modbus timeouts and a device that disappears and returns: the simulator's Modbus server stops
answering (requests taken and dropped, so the adapter times out) or is stopped and started again
on the same port, for a drawn 0.2-6 s (past `dead_after_s`, 5 s, at times), in turn, while the
adapter polls two units every 50 ms with the shipped reconnect backoff. Figures: wrong values
published (goal 0), outages reported on the errors topic and counted, bad quality meanwhile,
and the time from the device's return to the first good reading."""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest

from faults.conftest import Figure, scaled
from tests.helpers import Probe
from tests.modbus.outages import Kind, run_outages


@pytest.mark.timeout(900)  # ~6 s an outage, 30 of them: past the suite's 300 s per test
async def test_a_silent_or_vanished_device_is_reported_and_never_gives_wrong_values(
    base_config: dict[str, Any], probe: Probe, site: str, figure: Figure
) -> None:
    rounds = scaled(15, least=2)
    rng = random.Random(3)
    kinds: list[Kind] = ["timeout", "gone"]
    plan = [(kind, round(rng.uniform(0.2, 6.0), 1)) for _ in range(rounds) for kind in kinds]
    found = await run_outages(base_config, site, probe, plan)
    n = len(found.outages)
    reported = [o for o in found.outages if o.reason]
    counted = [o for o in found.outages if o.counted >= 1]
    marked = [o for o in found.outages if o.bad >= 1]
    ok = found.wrong == 0 and len(reported) == len(counted) == len(marked) == n

    def back(kind: str) -> str:
        s = sorted(o.back_s for o in found.outages if o.kind == kind)
        return f"p50 {statistics.median(s):.2f} s, max {s[-1]:.2f} s"

    figure(
        "Modbus timeouts, device gone",
        f"{rounds} times each, in turn: the device stops answering (timeouts), the device's "
        f"server stopped and started again on the same port; down 0.2-6 s; "
        f"{found.batches:,} reading batches",
        f"wrong values published {found.wrong}; {len(reported)}/{n} reported on the errors "
        f"topic, {len(counted)}/{n} counted in the status (`timeout`), {len(marked)}/{n} bad "
        f"quality (NaN) meanwhile; first good reading after the return: timeouts "
        f"{back('timeout')}, device gone {back('gone')}",
        ok,
    )
    assert ok, [o for o in found.outages if not (o.reason and o.counted and o.bad)]
