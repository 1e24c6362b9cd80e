"""A device that times out and one that disappears and returns: reported, counted, bad quality
meanwhile, never a wrong value, good readings again once it answers."""

from __future__ import annotations

from typing import Any

from tests.helpers import Probe
from tests.modbus.outages import run_outages


async def test_timeouts_and_a_device_gone_are_reported_counted_and_recovered(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    found = await run_outages(base_config, site, probe, [("timeout", 0.3), ("gone", 0.3)])
    timeout, gone = found.outages
    assert "no answer" in timeout.reason and "bad quality until it answers again" in timeout.reason
    assert "cannot connect" in gone.reason or "no answer" in gone.reason
    assert timeout.counted >= 1 and gone.counted >= 1
    assert timeout.bad >= 1 and gone.bad >= 1
    assert found.wrong == 0
