"""Actuator safety: results duplicated, replayed, out of order and delivered late, and the
deployed model swapped in the middle of a rule's debounce, fed to a real actuator that writes
the simulator's alarm lamp (coil 0) through the real Modbus adapter. Figures: writes the device
received that no trusted result called for (unsafe) and writes of a value the coil already had
(double), both counted at the device; goal 0."""

from __future__ import annotations

import asyncio
from typing import Any

from faults.conftest import Figure, scaled
from shared.messages import ResultBatch, now_ns
from tests.actuator.helpers import OTHER_SHA, PERIOD_NS, SHA, Plant, lamp_action, plant
from tests.helpers import Probe

MAX_AGE_MS = 1000  # generous: a genuine result must stay fresh on a loaded machine
LATE_S = MAX_AGE_MS / 1000 + 0.3  # a late delivery: held in transit past the age limit


class Device:
    """Every write the simulator's Modbus server took on coil 0 of unit 1 (the lamp)."""

    def __init__(self, p: Plant) -> None:
        assert p.sim.modbus is not None
        self.values: list[bool] = []
        self.double = 0  # a value written to the coil that already had it
        server = p.sim.modbus
        take = server.on_write
        assert take is not None

        def record(unit: int, table: str, address: int, values: list[int]) -> None:
            if unit == 1 and table == "coil" and address == 0:
                for v in values:
                    self.double += bool(self.values) and self.values[-1] == bool(v)
                    self.values.append(bool(v))
            take(unit, table, address, values)

        server.on_write = record


async def attack(p: Plant, sha: str, replays: list[ResultBatch]) -> None:
    """Results that must not count: duplicates, out of order, replays, a late delivery (each
    a high score, so any one counted would complete the rule's debounce)."""
    h1 = await p.send(0.9, sha=sha)
    await p.publish(h1)  # duplicated (at least once delivery)
    await p.publish(h1)
    await p.send(0.9, sha=sha)
    between = p.results.batch(sha, [int(h1.t[0]) + PERIOD_NS // 2], score=[0.9])
    await p.publish(between)  # out of order: older than the newest seen
    for old in replays[-3:]:
        await p.publish(old)  # replayed from earlier rounds
    # newer than every result seen, then held in transit (the fault itself) until it is
    # LATE_S old: the sample clock of the stream may run a little ahead of the wall clock
    t = max(now_ns(), p.results.t + 1)
    late = p.results.batch(sha, [t], score=[0.9])
    p.results.t = t
    await asyncio.sleep(LATE_S + max(0, t - now_ns()) / 1e9)
    await p.publish(late)


async def test_no_double_or_unsafe_write_under_duplicated_replayed_late_and_swapped(
    base_config: dict[str, Any], site: str, probe: Probe, figure: Figure
) -> None:
    rounds = scaled(30, least=2)
    action = lamp_action(for_samples=3, max_writes_per_minute=10_000)
    unsafe = missed = 0
    called_for = 0
    replays: list[ResultBatch] = []
    async with plant(base_config, site, probe, actions=[action], max_result_age_ms=MAX_AGE_MS) as p:
        device = Device(p)
        seen = 0

        async def check(wanted: int) -> None:
            """The device took `wanted` writes since the last check, no more."""
            nonlocal unsafe, missed, seen, called_for
            await p.settled()  # every result sent so far decided, its write answered
            new = len(device.values) - seen
            seen, called_for = len(device.values), called_for + wanted
            unsafe += max(0, new - wanted)
            missed += max(0, wanted - new)

        for r in range(rounds):
            old, new = (SHA, OTHER_SHA) if r % 2 == 0 else (OTHER_SHA, SHA)
            await attack(p, old, replays)  # two genuine highs among them: streak 2 of 3
            await check(0)
            await p.status(sha=new)  # the model is swapped mid-debounce
            await p.settled()
            await p.send(0.9, sha=old)  # the old model's result, still in flight
            await p.send(0.9, sha=new)  # the new model's first: its streak starts at 1
            await check(0)
            high = await p.send(0.9, 0.9, sha=new)  # the new model's 2nd and 3rd: set
            await check(1)
            await p.publish(high)  # duplicated after it acted
            await check(0)
            await p.send(0.5, sha=new)  # reset
            await check(1)
            replays.append(high)
        acted = len(p.events("acted"))
    double = device.double
    ok = unsafe == 0 and double == 0 and missed == 0 and acted == called_for == 2 * rounds
    values_ok = device.values == [True, False] * rounds
    figure(
        "actuator safety",
        f"{rounds} rounds of duplicated, out-of-order, replayed and late ({LATE_S:g} s, limit "
        f"{MAX_AGE_MS} ms) results and a model swap mid-debounce (`for_samples` 3), real "
        f"actuator → Modbus adapter → simulator coil",
        f"unsafe writes {unsafe}, double writes {double} (counted at the device); "
        f"{called_for} writes called for, {missed} not done",
        ok and values_ok,
    )
    assert ok and values_ok, (unsafe, double, missed, acted, device.values)
