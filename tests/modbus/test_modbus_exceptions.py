"""A unit that answers an exception code: a clear error per code on the errors topic, counted in
the status, bad quality (NaN) for its points, never a value; the other unit keeps polling."""

from __future__ import annotations

from typing import Any

from tests.helpers import Probe
from tests.modbus.exceptions import run_codes


async def test_exception_codes_are_reported_counted_and_the_other_unit_keeps_polling(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    # a common one, one the specification leaves unassigned, a gateway's
    result = await run_codes(base_config, site, probe, [0x02, 0x09, 0x0B])
    reasons = {r.code: r.reason for r in result.runs}
    assert "illegal data address" in reasons[0x02] and "unit 1 holding 100..100" in reasons[0x02]
    assert "does not define" in reasons[0x09]
    assert "gateway target device failed to respond" in reasons[0x0B]
    for run in result.runs:
        assert run.counted >= 1 and run.failed_bad >= 1 and run.other_good >= 1, run
    assert result.wrong == 0 and result.batches > 0
