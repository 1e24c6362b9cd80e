"""Broker killed: the site's mosquitto (started and supervised by `edgefleet up`) SIGKILLed 20
times while the whole data path runs (Modbus simulator → adapter → aligner → inference →
forwarder → SQLite history). Figures: sample times lost per kill, readings the aligner had to
drop as late, results that reached the site broker but not the forwarder's outbox, and the time
from each kill until every service is online again."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from edgefleet.broker import free_port
from faults.conftest import Figure, scaled
from tests.helpers import Probe
from tests.inference.models import mlp
from tests.site.helpers import FEATURES, flow_data, site_data, write_site
from tests.site.test_broker_restart import (
    INSTANCES,
    Results,
    missing_sample_times,
    pid_of,
    queued_sample_times,
    restarting,
)
from tests.site.up_process import UpProcess

# The aligner waits this long for late readings: longer than an outage (kill, restart, every
# service reconnected, the adapter's outbox sent), so readings held across it still count.
MAX_DELAY_MS = 4000


async def test_site_broker_killed_again_and_again(
    tmp_path: Path, site: str, simulator: int, figure: Figure
) -> None:
    kills_wanted = scaled(20, least=2)
    (tmp_path / "flows").mkdir()
    mlp(tmp_path / "flows" / "pump.onnx", f=len(FEATURES))
    port = free_port()
    data = site_data(site, port, simulator, forwarder={"queue_dir": str(tmp_path / "queue")})
    data["broker"]["start_local"] = True
    data["sources"][0]["publish_qos"] = 1  # readings held in the adapter's outbox, not dropped
    flow = flow_data(sinks=[{"kind": "sqlite", "path": "history.db"}])
    flow["align"]["max_delay_ms"] = MAX_DELAY_MS
    path = write_site(tmp_path, data, flow)
    results = Results(port, f"ef/{site}/results/pump")
    recovery: list[float] = []  # kill → every instance online again
    first_result: list[float] = []  # kill → the first result of a sample taken after it
    kill_times: list[float] = []

    async with UpProcess(path, tmp_path / "w", tmp_path / "up.out") as up:
        _, detail = await up.wait_state("broker", "online")
        broker_pid = pid_of(detail)
        for name in INSTANCES:
            await up.wait_state(name, "online", timeout=90)
        await results.connection.subscribe(results.topic)
        receiving = asyncio.create_task(results.connection.run())
        async with Probe("127.0.0.1", port) as probe:
            await probe.subscribe(f"ef/{site}/status/+")
            await results.wait_sampled_after(int((time.time() + 2.0) * 1e9), timeout=60)
            for kill in range(1, kills_wanted + 1):
                mark = len(up.lines)
                killed_at = time.time()
                kill_times.append(killed_at)
                os.kill(broker_pid, signal.SIGKILL)
                await up.wait_state("broker", "exited", mark, lambda d: d.startswith("signal 9"))
                await up.wait_state("broker", "restarting", mark, restarting(kill))
                _, detail = await up.wait_state("broker", "online", mark, timeout=60)
                broker_pid = pid_of(detail)
                for name in INSTANCES:
                    await up.wait_state(name, "online", mark, timeout=60)
                recovery.append(time.time() - killed_at)
                back = await results.wait_sampled_after(int(killed_at * 1e9), timeout=60)
                first_result.append(back - killed_at)
                # steady again (the late readings of this outage decided) before the next kill
                await results.wait_sampled_after(
                    int((time.time() + MAX_DELAY_MS / 1000 + 1) * 1e9), timeout=60
                )
            healths: dict[str, dict[str, Any]] = {}
            for name in INSTANCES:
                status = await probe.wait_for(
                    f"ef/{site}/status/{name}",
                    lambda s: s["state"] == "online" and s["health"]["reconnects"] >= kills_wanted,
                    timeout=30,
                )
                healths[name] = status[0]["health"]
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        assert await up.stop() == 0

    ts, missing = missing_sample_times(tmp_path / "flows" / "history.db")
    assert ts[0] / 1e9 < kill_times[0] and ts[-1] / 1e9 > kill_times[-1]
    # results that reached the broker (this subscriber saw them) but not the forwarder's
    # outbox: neither in the history, nor still queued, nor held in its saved session
    kept = set(ts) | queued_sample_times(tmp_path / "queue" / "sqlite.db")
    held = (tmp_path / "w" / "broker" / "mosquitto.db").read_bytes()
    seen = {t for _, sampled in results.sampled for t in sampled}
    not_forwarded = [t for t in seen - kept if f"pump:{t}".encode() not in held]
    # A reading the aligner takes after its sample was decided is counted late. With the
    # adapter's "complete up to t" in each batch a sample waits for its readings (or for
    # MAX_DELAY_MS, longer than any outage here), so what comes late is a QoS 1 redelivery of a
    # batch already used: the restarted broker restores the session's queue as last saved.
    late = healths["aligner-pump"]["aligner"]["late"]
    outbox_dropped = sum(h["dropped"] for h in healths.values())
    queue = healths["forwarder"]["sink_sqlite"]
    print(f"recovery {recovery}; first result {first_result}; missing {len(missing)}")
    ok = (
        not missing
        and not not_forwarded
        and max(recovery) < MAX_DELAY_MS / 1000
        and outbox_dropped == 0
        and queue["dropped"] == 0
    )
    figure(
        "broker killed",
        f"site mosquitto SIGKILL ×{kills_wanted} under `edgefleet up`, Modbus polled every "
        f"100 ms, {len(ts):,} samples in the history",
        f"lost per kill {len(missing) / kills_wanted:.1f} samples ({len(missing)} in all), "
        f"{late} readings redelivered after their sample (at least once), "
        f"{len(not_forwarded)} results past the broker but not in the forwarder's outbox, "
        f"{outbox_dropped} dropped from outboxes; every "
        f"service back {statistics.median(recovery):.1f} s after a kill (p50, max "
        f"{max(recovery):.1f} s), first result of a later sample "
        f"{statistics.median(first_result):.1f} s",
        ok,
    )
    assert ok, (missing[:5], not_forwarded[:5], late, outbox_dropped, queue)
