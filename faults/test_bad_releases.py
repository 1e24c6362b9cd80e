"""Bad releases: desired states a running site's agent must never apply, offered round after
round while its flow serves (a new result awaited after each refusal): one signed by a key the
site does not trust, and one whose pinned model was changed in the fleet's S3 after it was
pushed (the bytes the node downloads do not hash to the digest the signed state pins). Figures:
activations (goal 0), refusals reported with the reason that names the fault, and the longest
wait of a sample for a result while the offers were tried, beside the same with no offer (live
downtime)."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from minio import Minio

from edgefleet.broker import LocalBroker
from edgefleet.fleet.blobs import BLOB_PREFIX
from edgefleet.fleet.client import FleetClient
from edgefleet.locals3 import LocalS3
from edgefleet.site.load import load_site
from edgefleet.site.supervisor import SiteSupervisor
from faults.conftest import Figure, scaled
from faults.test_bad_models import arrivals, longest_wait, read_times
from shared.signing import SigningKey
from shared.topics import Topics
from tests.agent.nodes import write_node
from tests.agent.test_agent import KEY, deploy, desired, push, reported, result_from
from tests.helpers import Probe, until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
BASELINE = 20  # result messages of steady serving before the first offer
REASONS = {  # what the node's report must say, per fault
    "wrongly signed": "refused (signature)",
    "tampered": "sha256 of what came is",
}


def tamper(s3: LocalS3, bucket: str, sha256: str) -> None:
    """The blob's bytes in S3 changed, its size kept: only its digest can tell."""
    client = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False, region="us-east-1")
    key = f"{BLOB_PREFIX}{sha256}"
    response = client.get_object(bucket, key)
    try:
        data = bytes(b ^ 0x5A for b in response.read())
    finally:
        response.close()
        response.release_conn()
    client.put_object(bucket, key, io.BytesIO(data), len(data))


async def test_bad_releases_are_refused_and_the_live_flow_serves(
    tmp_path: Path,
    broker: LocalBroker,
    fleet: FleetClient,
    s3: LocalS3,
    bucket: str,
    site: str,
    simulator: int,
    figure: Figure,
) -> None:
    rounds = scaled(10)
    live = await push(fleet, tmp_path, "pump-live", seed=2)
    unsigned = await push(fleet, tmp_path, "pump-unsigned", seed=3)  # sound, but not our key's
    tampered = await push(fleet, tmp_path, "pump-tampered", seed=4)
    live_sha = live["pins"]["model"]["sha256"]
    await asyncio.to_thread(tamper, s3, bucket, tampered["pins"]["model"]["sha256"])
    other = SigningKey.generate()
    offers = [kind for _ in range(rounds) for kind in REASONS]
    topics = Topics(site, site)
    out, fed = tmp_path / "results.txt", tmp_path / "samples.txt"
    path = write_node(tmp_path / "site", site, site, broker, simulator, KEY, 20)
    async with (
        Probe(broker.host, broker.port) as probe,
        SiteSupervisor(load_site(path), tmp_path / "w") as sup,
    ):
        await probe.subscribe(topics.everything())
        await deploy(probe, site, desired(site, 1, live), tmp_path)
        await reported(probe, site, 1, "applied")
        await result_from(probe, site, live_sha)
        pid = sup.instances["inference-pump"].pid
        watch = await arrivals(broker.port, topics.results("pump"), out)
        watch_fed = await arrivals(broker.port, topics.samples("pump"), fed)
        # a stretch of steady serving first, to compare the waits with
        await until(lambda: len(read_times(out)) >= BASELINE, timeout=120)
        t0 = time.time()
        errors = []
        for revision, kind in enumerate(offers, start=2):
            if kind == "wrongly signed":
                wire = desired(site, revision, unsigned, key=other)
            else:
                wire = desired(site, revision, tampered)
            seen = len(probe.received(topics.results("pump")))
            await deploy(probe, site, wire, tmp_path)
            errors.append((await reported(probe, site, revision, "failed"))["error"] or "")
            # the live flow serves on past each refusal: a result newer than the offer
            await probe.wait_for(topics.results("pump"), count=seen + 1, timeout=60)
        t1 = time.time()
        # as long a stretch again with no offer (capped): the waits the loaded machine alone
        # causes, to read the figure against
        after = min(t1 - t0, 30.0)
        await asyncio.sleep(after)
        t2 = t1 + after
        for process in (watch, watch_fed):
            process.terminate()
            await process.wait()
        restarted = sup.instances["inference-pump"].pid != pid
    times, sample_times = read_times(out), read_times(fed)
    applied = [
        r for r in probe.decoded(topics.reported()) if r["state"] in ("activating", "applied")
    ]
    served = {r["model"]["sha256"] for r in probe.decoded(topics.results("pump"))}
    activations = len([r for r in applied if r["revision"] > 1]) + len(served - {live_sha})
    activations += restarted
    clear = sum(REASONS[kind] in error for kind, error in zip(offers, errors, strict=True))
    start = times[0] if times else t0
    during = longest_wait(times, sample_times, t0, t1)
    quiet = max(
        longest_wait(times, sample_times, start, t0), longest_wait(times, sample_times, t1, t2)
    )
    ok = activations == 0 and clear == len(offers)
    figure(
        "bad release",
        f"{len(offers)} desired states offered to a serving site's agent ({rounds} rounds of "
        f"signed by an untrusted key, pinned model changed in S3 after its push)",
        f"activations {activations}; {clear}/{len(offers)} refused with the reason that names "
        f"the fault; longest wait of a sample for a result while offers were tried "
        f"{during:.2f} s over {t1 - t0:.0f} s (with no offer, before and after: {quiet:.2f} s "
        f"over {t0 - start + after:.0f} s)",
        ok,
    )
    assert ok, (activations, clear, errors[:2])
