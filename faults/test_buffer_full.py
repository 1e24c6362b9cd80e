"""Buffer full: the cloud away long enough for the forwarder's queue to reach its bound.
Figure: results dropped as counted against results missing at the cloud (equal: every drop is
counted, nothing else is lost), and the time from the cloud's return to the first delivery."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgefleet.broker import LocalBroker
from faults.conftest import Figure, ResultIds, scaled
from services.forwarder.service import main
from shared.topics import Kind, Topics
from tests.forwarder.conftest import result_ids, results
from tests.forwarder.test_delivery import FAST, forwarder_config, sink_health
from tests.helpers import Probe, running

PER_BATCH = 10


async def test_queue_at_its_bound_drops_exactly_what_it_counts(
    base_config: dict[str, Any],
    tmp_path: Path,
    site: str,
    probe: Probe,
    cloud: LocalBroker,
    figure: Figure,
) -> None:
    bound = scaled(1000, least=50)  # messages the queue keeps
    batches = 3 * bound
    topics = Topics(site)
    sinks = [
        {
            "kind": "mqtt",
            "name": "cloud",
            "broker": {"port": cloud.port},
            "queue": {"max_messages": bound},
            **FAST,
        }
    ]
    config = forwarder_config(base_config, tmp_path, sinks)
    status = topics.status("fwd")
    await probe.subscribe(status)
    durable = {"client_id": f"{site}-cloud-probe", "clean_start": False, "session_expiry_s": 3600}
    async with Probe(cloud.host, cloud.port, **durable) as remote:
        await remote.subscribe(topics.all_of(Kind.RESULTS))
        async with running(main(config)):
            await probe.wait_for(status, lambda s: s["state"] == "online")
            cloud.stop()
            for i in range(batches):
                await probe.publish(
                    topics.results("pump"), results("pump", i * PER_BATCH, PER_BATCH), qos=1
                )
            full = sink_health(
                "cloud",
                lambda q: q["queued"] == bound and q["dropped_messages"] == batches - bound,
            )
            [st] = await probe.wait_for(status, full, timeout=120)
            counted = st["health"]["sink_cloud"]["dropped"]
            back = time.monotonic()
            cloud.start()
            ids = ResultIds(remote, topics.results("pump"))
            await remote.wait_until(lambda: bool(ids()), timeout=60)
            resumed_s = time.monotonic() - back
            expected = result_ids("pump", 0, batches * PER_BATCH)
            kept = expected[(batches - bound) * PER_BATCH :]  # the newest: the oldest go first
            await remote.wait_until(lambda: set(ids()) >= set(kept), timeout=120)
    arrived = set(ids())
    missing = len(set(expected) - arrived)
    ok = counted == missing and ids()[0] == kept[0] and arrived == set(kept)
    figure(
        "buffer full",
        f"cloud away; {batches:,} messages ({batches * PER_BATCH:,} results) into a queue of "
        f"{bound:,}",
        f"{counted:,} results dropped as counted, {missing:,} missing at the cloud; the first "
        f"delivery {resumed_s:.2f} s after the cloud came back, oldest kept first",
        ok,
    )
    assert ok
