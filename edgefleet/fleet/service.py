"""The fleet service: the command table served over MQTT v5 request/response.

`edgefleet run fleet --config fleet.yaml`. Commands arrive on `ef/fleet/commands`; a few
workers serve them at once (a commit reads a whole blob and loads a model, which must not hold
up a `library list`); handlers run in threads, SQLite and S3 being blocking. Staged uploads that
were never committed are swept once their URL has expired.

It also watches every node: `ef/+/status/agent` (online, labels, versions) and `ef/+/reported`
(how far a node got with its desired state) update the node table and the deployments; a loop
fails the nodes of a deployment past their timeout, and staged rollouts advance or abort
(rollout.py) after each batch of reports and each timeout check. At start it publishes every
node's latest desired state again, in case one was committed and the process died before its
publish. The inference instances' retained statuses (`ef/+/status/inference-{flow}`) are kept
too: the shadow report reads them (shadow.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from edgefleet.fleet import commands, deploy, nodes, rollout, rotation
from edgefleet.fleet.config import Config
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from edgefleet.fleet.metrics import FleetCollector
from edgefleet.fleet.shadow import INFERENCE_PREFIX
from shared import codec
from shared.codec import Encoding
from shared.errors import EdgefleetError, PayloadError
from shared.health import HealthModel
from shared.messages import (
    DebugSession,
    DeploymentEvent,
    FleetAnswer,
    FleetCommand,
    Message,
    ReportedState,
    Status,
)
from shared.metrics import MetricsServer
from shared.mqtt import Received
from shared.requests import RequestServer, asking_site
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run
from shared.topics import (
    Kind,
    debug_of,
    every_debug_session,
    every_site,
    fleet_commands,
    fleet_deployments,
    parse,
    replies_root,
)

PUBLISH_TIMEOUT_S = 30.0

NAME = "fleet"
__all__ = ["NAME", "SPEC", "Config", "FleetService", "check", "main"]

log = logging.getLogger(__name__)


def check(config: Config) -> None:
    """What `--check` verifies beyond the file: the S3 credentials can be read."""
    config.s3.access_key_id()
    config.s3.secret_key()


def refuse(exc: Exception, request: FleetCommand | None) -> Message:
    if isinstance(exc, FleetError):
        return commands.refusal(exc.code, exc.message)
    if isinstance(exc, PayloadError):
        return commands.refusal(
            "invalid", f"{exc}; a command is {{v: 1, cmd: NAME, args: {{...}}}}"
        )
    if isinstance(exc, EdgefleetError):
        return commands.refusal("invalid", str(exc))
    return commands.refusal("internal", "internal error in the fleet service: see its log")


class FleetHealth(HealthModel):
    commands: dict[str, int]  # served, refused, malformed, failed, unanswerable, misrouted
    queued: int
    observations_queued: int  # agents' statuses and reports not stored yet


class FleetService(Service[Config]):
    health_section = "fleet"

    def __init__(self, rt: Runtime, config: Config, fleet: Fleet) -> None:
        super().__init__(rt, config)
        self.fleet = fleet
        self.topic = fleet_commands(config.prefix)
        self.deployments = fleet_deployments(config.prefix)
        self.queue: asyncio.Queue[Received] = asyncio.Queue(maxsize=config.workers * 16)
        # answers only on fleet reply topics: a site cannot route one into its own tree
        self.server = RequestServer(
            rt,
            self.topic,
            FleetCommand.from_wire,
            self.handle,
            refuse,
            replies_under=replies_root(config.prefix),
        )
        self.observed: asyncio.Queue[nodes.Observation] = asyncio.Queue(maxsize=100_000)
        self.loop = asyncio.get_running_loop()
        fleet.publish = self.publish_from_thread
        fleet.announce = self.announce_from_thread
        self.metrics: MetricsServer | None = None
        fleet.debug.publish = self.publish_session_from_thread

    async def start(self) -> None:
        prefix = self.config.prefix
        await self.rt.subscribe(self.topic, self.enqueue)
        # Every status: the agents' (nodes) and the inference instances' (shadow figures).
        await self.rt.subscribe(every_site(Kind.STATUS, prefix), self.on_status)
        await self.rt.subscribe(every_site(Kind.REPORTED, prefix), self.on_reported)
        await self.rt.subscribe(every_site(Kind.BRIDGE, prefix), self.on_bridge)
        if self.config.metrics is not None:
            collector = FleetCollector(
                self.fleet.store, self.counters, self.config.node_stale_after_s
            )
            self.metrics = MetricsServer(collector, self.config.metrics)
            self.metrics.start()
        await self.rt.subscribe(every_debug_session(prefix), self.on_debug_session)
        key = self.fleet.signing_key
        log.info(
            "fleet serving %s: db %s, S3 %s bucket %s, signing key %s",
            self.topic,
            self.config.db,
            self.config.s3.endpoint,
            self.config.s3.bucket,
            key.public.key_id if key else "none (no deploy)",
        )

    def loops(self) -> dict[str, Loop]:
        workers: dict[str, Loop] = {
            f"command_{i}_loop": self.command_loop for i in range(self.config.workers)
        }
        return {
            **workers,
            "sweep_loop": self.sweep_loop,
            "timeout_loop": self.timeout_loop,
            "watch_loop": self.watch_loop,
            "republish_loop": self.republish,
        }

    def health(self) -> FleetHealth:
        return FleetHealth(
            commands=self.server.stats.as_dict(),
            queued=self.queue.qsize(),
            observations_queued=self.observed.qsize(),
        )

    def counters(self) -> dict[str, int]:
        """Commands by outcome and the queues, for /metrics (read from a scrape's thread)."""
        return {
            **self.server.stats.as_dict(),
            "queued_commands": self.queue.qsize(),
            "queued_observations": self.observed.qsize(),
        }

    async def close(self) -> None:
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
            self.metrics = None

    def publish_from_thread(self, topic: str, wire: dict[str, Any]) -> None:
        """From a handler's thread: one retained QoS 1 publish, acked (or buffered)."""
        future = asyncio.run_coroutine_threadsafe(
            self.rt.publish(topic, wire, qos=1, retain=True), self.loop
        )
        result = future.result(PUBLISH_TIMEOUT_S)
        if not result.ok:
            raise FleetError("publish_failed", f"{topic}: the broker refused: {result.reason}")

    def announce_from_thread(self, event: DeploymentEvent) -> None:
        """From a handler's thread: one event, JSON (for other systems), not waited on."""
        asyncio.run_coroutine_threadsafe(
            self.rt.publish(self.deployments, event, encoding=Encoding.JSON, qos=1), self.loop
        )

    def publish_session_from_thread(
        self, topic: str, wire: dict[str, Any] | None, expiry_s: int | None
    ) -> None:
        """A debug session's retained request (with its message expiry), or its clearing."""
        if wire is None:
            coro = self.rt.mqtt.publish(topic, b"", qos=1, retain=True)
        else:
            coro = self.rt.publish(topic, wire, qos=1, retain=True, expiry_s=expiry_s)
        result = asyncio.run_coroutine_threadsafe(coro, self.loop).result(PUBLISH_TIMEOUT_S)
        if not result.ok:
            raise FleetError("publish_failed", f"{topic}: the broker refused: {result.reason}")

    async def on_debug_session(self, message: Received) -> None:
        """The retained session requests: what is open, also after a restart."""
        _, _, session = debug_of(message.topic)
        request = None
        if message.payload:
            request = DebugSession.from_wire(codec.decode(message.payload, message.content_type))
        self.fleet.debug.seen(session, request)

    async def on_status(self, message: Received) -> None:
        topic = parse(message.topic)
        if topic.name != "agent" and not str(topic.name).startswith(INFERENCE_PREFIX):
            return  # other services' statuses: nothing the fleet keeps
        if not message.payload:
            return  # a retained status cleared
        status = Status.from_wire(codec.decode(message.payload, message.content_type))
        if status.instance != topic.name:
            raise PayloadError(f"a status of {status.instance!r} on {topic.name}'s topic")
        await self.observed.put((topic.site, status))

    async def on_bridge(self, message: Received) -> None:
        """The site bridge's notification: `1` connected, `0` gone (its last will)."""
        site = parse(message.topic).site
        await self.observed.put((site, nodes.Bridge.from_payload(message.payload)))

    async def on_reported(self, message: Received) -> None:
        site = parse(message.topic).site
        reported = ReportedState.from_wire(codec.decode(message.payload, message.content_type))
        if reported.site != site:
            raise PayloadError(f"a reported state for site {reported.site!r} on {site}'s topic")
        await self.observed.put((site, reported))

    async def watch_loop(self) -> None:
        """Store what agents publish: whatever has arrived meanwhile goes in one batch."""
        while True:
            batch = [await self.observed.get()]
            while not self.observed.empty() and len(batch) < 5000:
                batch.append(self.observed.get_nowait())
            await asyncio.to_thread(self.observe, batch)

    def observe(self, batch: list[nodes.Observation]) -> None:
        """Store the batch, then move staged rollouts on: a canary's failure aborts at once."""
        rollout.observe(self.fleet, batch)  # the reports and the rollouts' moves: one commit
        if any(isinstance(m, ReportedState) for _, m in batch):
            rotation.progress(self.fleet)

    async def timeout_loop(self) -> None:
        while True:
            # timeouts and the rollouts they move on, soak times: one commit
            failed = await asyncio.to_thread(rollout.expire, self.fleet)
            if failed:
                log.warning("%d node(s) timed out in their deployment", failed)
            await asyncio.sleep(self.config.deploy_check_interval_s)

    async def republish(self) -> None:
        """After a restart: every node's latest desired state again (a crash between commit and
        publish loses nothing)."""
        count = await asyncio.to_thread(deploy.republish, self.fleet)
        log.info("published the latest desired state of %d node(s) again", count)

    async def handle(self, request: FleetCommand, message: Received) -> Message:
        asker = asking_site(message, self.config.prefix)
        result = await asyncio.to_thread(commands.run, self.fleet, request.cmd, request.args, asker)
        return FleetAnswer(ok=True, result=result.model_dump(mode="json"))

    async def enqueue(self, message: Received) -> None:
        await self.queue.put(message)  # full: the dispatch loop waits (back-pressure)

    async def command_loop(self) -> None:
        while True:
            message = await self.queue.get()
            await self.server.on_request(message)

    async def sweep_loop(self) -> None:
        while True:
            removed = await asyncio.to_thread(self.fleet.sweep)
            if removed:
                log.info("removed %d staged upload(s) never committed", removed)
            await asyncio.sleep(self.config.sweep_interval_s)


async def main(config: Config) -> None:
    fleet = await asyncio.to_thread(Fleet.open, config)
    await asyncio.to_thread(rotation.restore, fleet)  # a rotation's new key signs from then on
    try:
        await run(NAME, config, lambda rt: FleetService(rt, config, fleet))
    finally:
        fleet.close()


SPEC = ServiceSpec(NAME, Config, main, check, service=FleetService)
