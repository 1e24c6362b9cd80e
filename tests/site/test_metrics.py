"""A running site's `/metrics`, scraped over HTTP and parsed with Prometheus' own text parser:
the real simulator, a real mosquitto, every service as the process `edgefleet up` starts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import onnx
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.broker import LocalBroker, free_port
from edgefleet.site.metric_families import NAMES
from edgefleet.site.supervisor import SiteSupervisor
from tests.inference.models import add_metadata, column_stats, mlp, save, training_data
from tests.site.helpers import FEATURES, flow_data, site_data, write_site

ROOT = Path(__file__).resolve().parents[2]
INSTANCES = ["modbus-plc1", "aligner-pump", "inference-pump", "actuator-pump", "forwarder"]
Scrape = dict[str, list[tuple[dict[str, str], float]]]
ALWAYS = {"when": "score > -1e30", "write": {"source": "plc1", "table": "coil", "address": 0,
          "value": True}}  # fmt: skip


def scrape(port: int) -> tuple[str, Scrape]:
    """GET /metrics as Prometheus would; samples by name, with their labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return text, out


def value(samples: Scrape, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [v for lb, v in samples.get(name, []) if labels.items() <= lb.items()]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def pump_model(path: Path) -> Path:
    mlp(path, f=len(FEATURES))
    stats = column_stats(training_data(f=len(FEATURES)))
    return save(add_metadata(onnx.load(path), [str(f) for f in FEATURES], stats), path)


def write_pump_site(tmp_path: Path, site: str, broker: LocalBroker, sim: int) -> Path:
    (tmp_path / "flows").mkdir()
    pump_model(tmp_path / "flows" / "pump.onnx")
    data = site_data(site, broker.port, sim, metrics={"port": 0, "host": "127.0.0.1"})
    flow = flow_data(actions=[ALWAYS], sinks=[{"kind": "sqlite", "path": "history.db"}])
    return write_site(tmp_path, data, flow)


async def wait_health(
    sup: SiteSupervisor, instance: str, ok: Callable[[dict[str, object]], bool]
) -> None:
    """Until the supervisor's latest status of `instance` satisfies `ok` (statuses are events)."""
    await sup.book.wait_for(lambda book: instance in book and ok(book[instance].health), timeout=30)


async def test_a_running_site_exports_its_statuses_and_the_counters_move(
    tmp_path: Path, broker: LocalBroker, site: str, simulator: int
) -> None:
    path = write_pump_site(tmp_path, site, broker, simulator)
    async with SiteSupervisor(path, tmp_path / "w") as sup:
        await sup.wait_online(timeout=60)
        assert sup.metrics is not None
        await wait_health(sup, "inference-pump", lambda h: results(h) > 0)
        await wait_health(sup, "forwarder", lambda h: "sink_sqlite" in h)
        # each figure comes from its own service's last status: the actuator's, once it decided
        await wait_health(sup, "actuator-pump", lambda h: sum(decisions(h).values()) > 0)
        text, first = await asyncio.to_thread(scrape, sup.metrics.port)

        inference = {"site": site, "instance": "inference-pump", "flow": "pump"}
        r1 = value(first, "edgefleet_inference_results_total", **inference)
        assert r1 > 0
        assert value(first, "edgefleet_instance_up", instance="modbus-plc1", source="plc1") == 1
        readings = value(first, "edgefleet_adapter_readings_total", instance="modbus-plc1")
        samples = value(first, "edgefleet_aligner_samples_total", instance="aligner-pump")
        assert readings > 0 and samples > 0
        # the histogram as Prometheus has it: cumulative buckets ending at +Inf == count
        count = value(first, "edgefleet_inference_latency_seconds_count", **inference)
        inf = value(first, "edgefleet_inference_latency_seconds_bucket", le="+Inf", **inference)
        assert count == inf >= r1 > 0
        assert value(first, "edgefleet_inference_batch_size_count", **inference) > 0
        for feature in FEATURES:
            live = {"feature": str(feature), "role": "live"}
            assert value(first, "edgefleet_inference_drift_score", **live) >= 0
        decided = [v for lb, v in first["edgefleet_actuator_decisions_total"]]
        assert sum(decided) > 0
        assert value(first, "edgefleet_forwarder_queued_messages", sink="sqlite") >= 0
        assert value(first, "edgefleet_forwarder_sent_messages_total", sink="sqlite") >= 0
        for instance in ("modbus-plc1", "aligner-pump", "inference-pump", "supervisor"):
            rss = value(first, "edgefleet_process_resident_memory_bytes", instance=instance)
            assert rss > 10 * 2**20
            assert value(first, "edgefleet_process_cpu_seconds_total", instance=instance) > 0
        assert value(first, "edgefleet_instance_restarts_total", instance="modbus-plc1") == 0
        exported = {family_of(n) for n in first}
        assert exported <= NAMES, exported - NAMES
        assert "# TYPE edgefleet_inference_latency_seconds histogram" in text

        # traffic goes on: the next status of each says more, and so does the next scrape
        await wait_health(sup, "inference-pump", lambda h: results(h) > r1)
        await wait_health(sup, "modbus-plc1", lambda h: counted(h, "modbus", "readings") > readings)
        await wait_health(
            sup, "aligner-pump", lambda h: counted(h, "aligner", "published_samples") > samples
        )
        _, second = await asyncio.to_thread(scrape, sup.metrics.port)
        assert value(second, "edgefleet_inference_results_total", **inference) > r1
        assert value(second, "edgefleet_adapter_readings_total", instance="modbus-plc1") > readings
        assert value(second, "edgefleet_aligner_samples_total", instance="aligner-pump") > samples

        # a service killed and restarted: its counters start again (a reset, for Prometheus)
        plc = sup.instances["modbus-plc1"]
        before = value(second, "edgefleet_adapter_readings_total", instance="modbus-plc1")
        victim = plc.pid
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        await sup.wait_state("modbus-plc1", "exited")
        await sup.wait_state("modbus-plc1", "online")
        await sup.book.wait_for(
            lambda book: book["modbus-plc1"].health.get("pid") not in (None, victim), timeout=30
        )
        _, third = await asyncio.to_thread(scrape, sup.metrics.port)
        assert value(third, "edgefleet_instance_restarts_total", instance="modbus-plc1") == 1
        assert value(third, "edgefleet_instance_up", instance="modbus-plc1") == 1
        assert value(third, "edgefleet_adapter_readings_total", instance="modbus-plc1") < before


def family_of(sample: str, names: frozenset[str] = NAMES) -> str:
    """The family a sample belongs to (a histogram's have suffixes)."""
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and sample.removesuffix(suffix) in names:
            return sample.removesuffix(suffix)
    return sample


def decisions(health: dict[str, object]) -> dict[str, float]:
    """The decisions by outcome an actuator status counts."""
    section = health.get("actuator")
    found = section.get("decisions") if isinstance(section, dict) else None
    return {str(k): float(v) for k, v in found.items()} if isinstance(found, dict) else {}


def counted(health: dict[str, object], section: str, key: str) -> float:
    """A counter of a status section (0 while the section is missing)."""
    found = health.get(section)
    n = found.get(key, 0) if isinstance(found, dict) else 0
    return float(n)


def results(health: dict[str, object]) -> float:
    """The result rows an inference status counts."""
    section = health.get("inference")
    n = section.get("results", 0) if isinstance(section, dict) else 0
    return float(n)


async def test_the_exporter_serves_a_site_whose_services_run_elsewhere(
    tmp_path: Path, broker: LocalBroker, site: str, simulator: int
) -> None:
    """`edgefleet metrics site.yaml` (compose: one container per service) reads the statuses
    alone: every instance, with CPU and memory as each process reports them."""
    path = write_pump_site(tmp_path, site, broker, simulator)
    port = free_port()
    log = (tmp_path / "metrics.log").open("wb")
    exporter = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "edgefleet.cli", "metrics", str(path), "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with SiteSupervisor(path, tmp_path / "w", only=INSTANCES) as sup:
            await sup.wait_online(timeout=60)
            assert sup.metrics is None  # a part of a site serves none
            await wait_health(sup, "inference-pump", lambda h: results(h) > 0)
            # the exporter is another process: nothing to await but its answer
            async with asyncio.timeout(30):
                while True:
                    try:
                        _, got = await asyncio.to_thread(scrape, port)
                        # each figure comes from its own service's last status: wait for all
                        if got.get("edgefleet_inference_results_total", [({}, 0)])[0][
                            1
                        ] > 0 and any(
                            v > 0 for _, v in got.get("edgefleet_aligner_samples_total", [])
                        ):
                            break
                    except OSError:  # not listening yet
                        pass
                    await asyncio.sleep(0.2)
        for instance in INSTANCES:
            assert value(got, "edgefleet_process_cpu_seconds_total", instance=instance) > 0
            rss = value(got, "edgefleet_process_resident_memory_bytes", instance=instance)
            assert rss > 10 * 2**20
        assert "edgefleet_instance_restarts_total" not in got  # only a supervisor knows
        assert value(got, "edgefleet_aligner_samples_total", instance="aligner-pump") > 0
    finally:
        exporter.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(exporter.wait(), 20) == 0
        log.close()
