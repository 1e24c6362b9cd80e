"""`edgefleet run modbus` ends on its SIGTERM whatever its broker does at that moment.

As when `edgefleet up` is SIGKILLed: its children get SIGTERM (PR_SET_PDEATHSIG) at the moment
the site's mosquitto, a child too, dies. A cancel that reached the poll loop as a read's answer
came was lost (Python 3.11's `asyncio.wait_for`, in pymodbus): the loop polled on and the
process never ended. The adapter polls fast here, so stops land in the middle of reads.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.broker import LocalBroker
from shared.topics import Topics
from tests.helpers import Probe
from tests.site.conftest import simulator

__all__ = ["simulator"]

INSTANCE = "modbus-stop"


def adapter_file(tmp_path: Path, base: dict[str, Any], port: int) -> Path:
    blocks = [  # twelve requests per poll: answers coming in when the stop comes
        {"unit": 1, "table": "input", "points": [{"name": f"r{a}", "address": a}]}
        for a in range(0, 120, 10)
    ]
    data = {**base, "instance": INSTANCE, "source": "plc1", "poll_ms": 10, "blocks": blocks,
            "device": {"port": port, "timeout_s": 0.5}}  # fmt: skip
    path = tmp_path / "modbus.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "broker_does", ["killed", "terminated", "frozen", "killed", "terminated", "killed"]
)
async def test_sigterm_ends_the_adapter_as_its_broker_dies(
    tmp_path: Path, broker: LocalBroker, base_config: dict[str, Any], site: str,
    simulator: int, broker_does: str,
) -> None:  # fmt: skip
    topics = Topics(site)
    path = adapter_file(tmp_path, base_config, simulator)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet.cli", "run", "modbus", "--config", str(path), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with Probe(broker.host, broker.port) as probe:
            await probe.subscribe(topics.status(INSTANCE))
            await probe.subscribe(topics.raw("plc1"))
            await probe.wait_for(topics.status(INSTANCE), lambda s: s["state"] == "online", 30)
            await probe.wait_for(topics.raw("plc1"), count=20)  # polling, reads in flight
        assert broker.process is not None
        how = {"killed": signal.SIGKILL, "terminated": signal.SIGTERM, "frozen": signal.SIGSTOP}
        broker.process.send_signal(how[broker_does])
        process.send_signal(signal.SIGTERM)
        # 10 s: the stop takes at most a few seconds (2 s for `stopped` to a frozen broker);
        # the lost cancel never ended
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if broker.process is not None:
            broker.process.send_signal(signal.SIGCONT)
