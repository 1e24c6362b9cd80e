"""Fixtures of the fleet tests: a real SeaweedFS S3 server, the fleet service on a real broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient, connect
from edgefleet.fleet.config import Config
from edgefleet.fleet.service import main
from edgefleet.locals3 import LocalS3, PortTaken
from shared.config import validate
from tests.conftest import SHARED
from tests.helpers import running


@pytest.fixture(scope="module")
def shared_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """One SeaweedFS for a module's tests (a start and a stop cost ~7 s); each test has a
    bucket of its own (`bucket`), each bucket 7 volumes of SeaweedFS's."""
    folder = tmp_path_factory.mktemp("s3")
    try:
        server = LocalS3(folder / "s3", max_volumes=1000).start(timeout=60)
    except PortTaken:
        # the S3 port, free when picked, taken by another process before weed bound it (weed
        # picks its other ports again by itself): once more on another; a slow or failed
        # start is not retried
        server = LocalS3(folder / "s3-again", max_volumes=1000).start(timeout=60)
    assert server.process is not None
    pid = server.process.pid
    SHARED.add(pid)
    try:
        yield server
    finally:
        SHARED.discard(pid)
        server.stop()


@pytest.fixture
def s3(shared_s3: LocalS3) -> LocalS3:
    assert shared_s3.running, "the module's S3 server died"
    return shared_s3


@pytest.fixture
def bucket(site: str) -> str:
    """The test's own bucket on the module's S3 server (the fleet creates it)."""
    return f"fleet-{site}"


@pytest.fixture
def fleet_config(
    tmp_path: Path,
    broker: LocalBroker,
    s3: LocalS3,
    bucket: str,
    site: str,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """A fleet.yaml's content; the test's own topic prefix keeps tests apart."""
    monkeypatch.setenv("TEST_S3_SECRET", s3.secret_key)
    return {
        "site": "cloud",
        "prefix": site,
        "broker": {"host": broker.host, "port": broker.port},
        "db": str(tmp_path / "fleet" / "fleet.db"),
        "work_dir": str(tmp_path / "fleet" / "work"),
        "s3": {
            "endpoint": s3.endpoint,
            "access_key": s3.access_key,
            "secret_key_env": "TEST_S3_SECRET",
            "bucket": bucket,
        },
        # a cold process importing onnxruntime took over 20 s on a loaded 2-core machine
        "inspect_timeout_s": 60,
        "timings": {"status_interval_s": 0.5, "reconnect_initial_s": 0.05, "reconnect_max_s": 0.5},
    }


def fleet_of(config: dict[str, Any]) -> Config:
    return validate(Config, config, "fleet.yaml")


@pytest.fixture
async def fleet(
    fleet_config: dict[str, Any], broker: LocalBroker, site: str
) -> AsyncIterator[FleetClient]:
    """The fleet service running in this process, and a client of it."""
    async with (
        running(main(fleet_of(fleet_config))),
        connect(f"{broker.host}:{broker.port}", prefix=site) as client,
    ):
        await wait_serving(client)
        yield client


async def wait_serving(client: FleetClient) -> None:
    """Until the service answers (it subscribes once connected)."""
    import asyncio

    from edgefleet.fleet.errors import FleetError

    for _ in range(100):
        try:
            await client.call("library.list", timeout=0.5)
            return
        except FleetError:
            await asyncio.sleep(0.05)
    raise TimeoutError("the fleet service did not answer")
