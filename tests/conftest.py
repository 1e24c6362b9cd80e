"""Fixtures that start real servers on free loopback ports and always stop them."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgefleet.broker import LocalBroker
from tests.helpers import Probe

SHARED: set[int] = set()  # pids of servers a module-scoped fixture keeps between its tests


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a child process running (and end that process); the servers a
    module's tests share (`SHARED`) live on until the module ends."""
    yield
    children = [c for c in psutil.Process().children(recursive=True) if c.pid not in SHARED]
    for child in children:
        child.kill()
    if children:
        names = ", ".join(f"{c.pid}" for c in children)
        pytest.fail(f"the test left processes running: {names}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    b = LocalBroker(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def site(request: pytest.FixtureRequest) -> str:
    """A site id of the test's own, so tests never see each other's messages."""
    return "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]


@pytest.fixture
def base_config(broker: LocalBroker, site: str) -> dict[str, Any]:
    """The common part of a service config, with timings shrunk for tests."""
    return {
        "site": site,
        "broker": {"host": broker.host, "port": broker.port},
        "timings": {
            "status_interval_s": 0.5,
            "error_report_interval_s": 0.2,
            "reconnect_initial_s": 0.05,
            "reconnect_max_s": 0.5,
        },
    }


@pytest.fixture
async def probe(broker: LocalBroker) -> AsyncIterator[Probe]:
    async with Probe(broker.host, broker.port) as p:
        yield p
