"""Modbus exception codes: one unit of the simulator's Modbus server answers each code 01-0B in
turn (0x09 too, which the specification leaves unassigned), rounds of all eleven, while the
adapter polls it and another unit every 50 ms. Figures: wrong values published (goal 0), codes
reported with their meaning and counted, and the other unit's good readings meanwhile."""

from __future__ import annotations

from typing import Any

from faults.conftest import Figure, scaled
from services.modbus.device import EXCEPTIONS
from tests.helpers import Probe
from tests.modbus.exceptions import run_codes

CODES = list(range(0x01, 0x0C))


async def test_every_exception_code_is_reported_and_the_other_unit_keeps_polling(
    base_config: dict[str, Any], probe: Probe, site: str, figure: Figure
) -> None:
    rounds = scaled(5)
    result = await run_codes(base_config, site, probe, CODES * rounds)
    explained = [
        r
        for r in result.runs
        if f"0x{r.code:02X}" in r.reason
        and EXCEPTIONS.get(r.code, "does not define").split(":")[0] in r.reason
    ]
    counted = [r for r in result.runs if r.counted >= 1]
    kept_polling = [r for r in result.runs if r.other_good >= 1]
    bad_not_values = [r for r in result.runs if r.failed_bad >= 1]
    n = len(result.runs)
    ok = result.wrong == 0 and len(explained) == len(counted) == len(kept_polling) == n
    ok = ok and len(bad_not_values) == n
    figure(
        "Modbus exception codes",
        f"unit 1 answers each code 01-0B in turn ×{rounds} ({n} episodes), unit 2 answers; "
        f"{result.batches:,} reading batches",
        f"wrong values published {result.wrong}; {len(explained)}/{n} reported with the code "
        f"and its meaning, {len(counted)}/{n} counted in the status, {len(bad_not_values)}/{n} "
        f"bad quality (NaN) for the failing unit, the other unit kept good readings in "
        f"{len(kept_polling)}/{n} ({sum(r.other_good for r in result.runs):,} readings)",
        ok,
    )
    assert ok, [r for r in result.runs if r not in explained or r not in kept_polling]
