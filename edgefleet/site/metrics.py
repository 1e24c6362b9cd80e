"""A site's `/metrics`: the latest retained status of every instance, rendered for Prometheus.

Served by the site supervisor (`edgefleet up`, with `metrics: {port: ...}` in site.yaml), which
already follows `status/+` and knows every process it started: one endpoint per node, nothing
added to the services' hot paths, and CPU and memory read from /proc for each supervised PID
(the broker's and the supervisor's own included), so a service that hangs still shows. Where
each service runs in a container of its own (compose/site.yml), `edgefleet metrics site.yaml`
serves the same endpoint from the statuses alone (CPU and memory as each process reports them).

A scrape renders what the book holds then: it never waits on the broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil
from prometheus_client.core import Metric

from edgefleet.site import metric_families as mf
from edgefleet.site.derive import Instance
from edgefleet.site.load import load_site
from shared import codec
from shared.health import health_of
from shared.messages import Status
from shared.metrics import SITE_PORT, MetricsServer, MetricsSettings, Samples
from shared.mqtt import MqttConnection, Received
from shared.topics import Kind, Topics, parse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Process:
    """What the supervisor knows of one process it runs."""

    pid: int | None
    restarts: int = 0
    service: str = ""


class StatusBook:
    """The latest status of every instance, written by the event loop, read by scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Status] = {}
        self._health: dict[str, dict[str, object]] = {}  # the last non-empty health of each
        self._changed = asyncio.Event()  # set by every put (in the event loop)

    def put(self, instance: str, status: Status) -> None:
        with self._lock:
            self._latest[instance] = status
            if status.health:  # a last will carries none: keep what the instance said last
                self._health[instance] = status.health
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[dict[str, Status]], bool], timeout: float = 30.0
    ) -> None:
        """Until `predicate` holds for the latest status of each instance."""
        async with asyncio.timeout(timeout):
            while True:
                with self._lock:
                    latest = dict(self._latest)
                if predicate(latest):
                    return
                self._changed.clear()
                await self._changed.wait()

    def snapshot(self) -> list[tuple[str, Status, dict[str, object]]]:
        with self._lock:
            return [(n, s, self._health.get(n, {})) for n, s in self._latest.items()]

    async def on_message(self, message: Received) -> None:
        """A message of `status/+`: kept when it is a status (anything else is not ours)."""
        try:
            parsed = parse(message.topic)
            if parsed.kind is not Kind.STATUS or not parsed.name or not message.payload:
                return
            status = Status.from_wire(codec.decode(message.payload, message.content_type))
        except Exception:  # a foreign message on a status topic: not ours to judge
            return
        self.put(parsed.name, status)


def roles(instances: Mapping[str, Instance]) -> dict[str, tuple[str, str, str]]:
    """Per instance: its service, flow and source, from the configs the site derived."""
    out: dict[str, tuple[str, str, str]] = {}
    for name, inst in instances.items():
        flow = inst.config.get("flow")
        if isinstance(flow, dict):  # the aligner carries its flow inline
            flow = flow.get("name")
        source = inst.config.get("source")
        out[name] = (inst.service, flow if isinstance(flow, str) else "", str(source or ""))
    return out


class SiteCollector:
    """A prometheus-client collector of one site's statuses (and processes, when supervised)."""

    def __init__(
        self,
        site: str,
        book: StatusBook,
        roles: Callable[[], Mapping[str, tuple[str, str, str]]],
        processes: Callable[[], Mapping[str, Process]] | None = None,
    ) -> None:
        self.site = site
        self.book = book
        self.roles = roles
        self.processes = processes

    def collect(self) -> Iterator[Metric]:
        s = Samples(mf.FAMILIES)
        known = self.roles()
        procs = dict(self.processes()) if self.processes is not None else {}
        seen: set[str] = set()
        pids = {p.pid for p in procs.values()}
        for name, status, raw in self.book.snapshot():
            service, flow, source = known.get(name, (status.service, "", ""))
            lb = {"site": self.site, "instance": name, "service": service}
            lb |= {"flow": flow, "source": source}
            running = procs[name].pid is not None if name in procs else None
            self._instance(s, lb, status, raw, running, pids)
            seen.add(name)
        for name, proc in procs.items():
            service, flow, source = known.get(name, (proc.service, "", ""))
            lb = {"site": self.site, "instance": name, "service": service}
            lb |= {"flow": flow, "source": source}
            s.add("edgefleet_instance_restarts_total", lb, proc.restarts)
            if name not in seen and name in known:
                s.add("edgefleet_instance_up", lb, 0)  # started, never said online
            _process(s, lb, proc.pid)
        yield from s.families()

    def _instance(
        self,
        s: Samples,
        lb: mf.Labels,
        status: Status,
        raw: dict[str, object],
        running: bool | None,
        supervised: set[int | None],
    ) -> None:
        """`running`: None when not supervised, else whether its process runs now (a status
        says online for a while after a SIGKILL, until the broker sends the last will)."""
        s.add("edgefleet_instance_up", lb, status.state == "online" and running is not False)
        for state in ("online", "stopped", "offline"):
            s.add("edgefleet_instance_state", {**lb, "state": state}, status.state == state)
        s.add("edgefleet_instance_start_time_seconds", lb, status.since and status.since / 1e9)
        s.add("edgefleet_status_timestamp_seconds", lb, status.t / 1e9)
        health = health_of(status.model_copy(update={"health": raw}))
        mf.runtime(s, lb, health)
        # CPU and memory as the process reported them, unless read from /proc (supervised: its
        # own process, or the supervisor's, which hosts the agent)
        if running is None and health.pid not in supervised and status.state == "online":
            s.add("edgefleet_process_cpu_seconds_total", lb, health.cpu_seconds)
            rss = health.rss_mb
            s.add("edgefleet_process_resident_memory_bytes", lb, rss and rss * mf.MB)
        extra = health.model_extra or {}
        for key, render in mf.SECTIONS.items():
            section = extra.get(key)
            if isinstance(section, dict):
                render(s, lb, section)
        mf.inference(s, lb, health)
        mf.forwarder(s, lb, health)


def _process(s: Samples, lb: mf.Labels, pid: int | None) -> None:
    if pid is None:
        return
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            cpu, rss = p.cpu_times(), p.memory_info().rss
    except psutil.Error:  # it ended between the supervisor's look and ours
        return
    s.add("edgefleet_process_cpu_seconds_total", lb, cpu.user + cpu.system)
    s.add("edgefleet_process_resident_memory_bytes", lb, rss)


SUPERVISOR = Process(os.getpid(), service="supervisor")


async def run_exporter(site_path: Path, stop: asyncio.Event, port: int | None = None) -> None:
    """`edgefleet metrics site.yaml`: follow the site's statuses and serve `/metrics` until
    `stop` is set (for sites whose services run in containers of their own)."""
    site = load_site(site_path)
    spec = site.spec
    settings = spec.metrics or MetricsSettings(port=SITE_PORT)
    if port is not None:
        settings = settings.model_copy(update={"port": port})
    book = StatusBook()
    known = roles(site.instances())
    server = MetricsServer(SiteCollector(spec.site, book, lambda: known), settings)
    connection = MqttConnection(
        spec.broker.settings(f"{spec.site}-metrics-{os.getpid()}", spec.timings), book.on_message
    )
    await connection.subscribe(Topics(spec.site, spec.prefix).all_of(Kind.STATUS), qos=1)
    server.start()
    task = asyncio.create_task(connection.run(), name="metrics_mqtt_loop")
    try:
        await stop.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(server.stop)
