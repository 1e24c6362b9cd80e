"""Fresh site: `edgefleet up` on a site whose broker has never seen its forwarder, again and
again (a new site id each round). Figures: results that reached the site broker but never the
history (the forwarder's persistent session did not exist yet when they were published), and
flow instances started before the forwarder was subscribed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edgefleet.broker import LocalBroker
from edgefleet.site.supervisor import SiteSupervisor, StatusChange
from faults.conftest import Figure, scaled
from tests.inference.models import mlp
from tests.site.helpers import FEATURES, flow_data, site_data, write_site
from tests.site.test_broker_restart import Results, missing_sample_times


def started_before_forwarder(changes: list[StatusChange]) -> list[str]:
    """Instances whose first start came before the forwarder first reported `online`."""
    online = next((i for i, c in enumerate(changes) if c.instance == "forwarder" and
                   c.state == "online"), len(changes))  # fmt: skip
    return sorted({c.instance for c in changes[:online] if c.state == "starting"} - {"forwarder"})


async def test_results_of_a_fresh_site_reach_the_history_from_the_first(
    tmp_path: Path, broker: LocalBroker, site: str, simulator: int, figure: Figure
) -> None:
    rounds = scaled(10, least=2)
    lost: list[int] = []  # per round
    early: list[list[str]] = []  # per round: instances started before the forwarder's session
    results_seen = 0
    for r in range(rounds):
        root = tmp_path / f"round{r}"
        (root / "flows").mkdir(parents=True)
        mlp(root / "flows" / "pump.onnx", f=len(FEATURES))
        fresh = f"{site}r{r}"  # a site id the broker has never seen: no forwarder session yet
        data = site_data(fresh, broker.port, simulator, forwarder={"queue_dir": str(root / "q")})
        path = write_site(root, data, flow_data(sinks=[{"kind": "sqlite", "path": "history.db"}]))
        results = Results(broker.port, f"ef/{fresh}/results/pump")
        await results.connection.subscribe(results.topic)
        receiving = asyncio.create_task(results.connection.run())
        await asyncio.wait_for(results.connection.wait_connected(), 10)
        changes: list[StatusChange] = []
        async with SiteSupervisor(path, root / "w", on_status=changes.append) as sup:
            await sup.wait_online(timeout=90)
            await results.wait_sampled_after(int((time.time() + 1.0) * 1e9), timeout=60)
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        ts, _ = missing_sample_times(root / "flows" / "history.db")
        # what the forwarder had not taken when it stopped waits in its session: not lost
        seen = {t for _, sampled in results.sampled for t in sampled if t <= ts[-1]}
        results_seen += len(seen)
        lost.append(len(seen - set(ts)))
        early.append(started_before_forwarder(changes))
    ordered = sum(1 for e in early if not e)
    ok = sum(lost) == 0 and ordered == rounds
    figure(
        "fresh site",
        f"`edgefleet up` ×{rounds} on a broker that never saw the site's forwarder, "
        f"{results_seen:,} results seen on the site broker",
        f"lost before the forwarder's session existed {sum(lost)} (worst start {max(lost)}); "
        f"flows started only once the forwarder was subscribed in {ordered}/{rounds} starts",
        ok,
    )
    assert ok, (lost, early)
