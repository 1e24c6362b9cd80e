"""The fleet service: the command table served over MQTT v5 request/response.

`edgefleet run fleet --config fleet.yaml`. Commands arrive on `ef/fleet/commands`; a few
workers serve them at once (a commit reads a whole blob and loads a model, which must not hold
up a `library list`); handlers run in threads, SQLite and S3 being blocking. Staged uploads that
were never committed are swept once their URL has expired.

It also watches every node: `ef/+/status/agent` (online, labels, versions) and `ef/+/reported`
(how far a node got with its desired state) update the node table and the deployments; a loop
fails the nodes of a deployment past their timeout. At start it publishes every node's latest
desired state again, in case one was committed and the process died before its publish.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from edgefleet.fleet import commands, deploy, nodes
from edgefleet.fleet.config import Config
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from shared import codec
from shared.errors import EdgefleetError, PayloadError
from shared.messages import FleetAnswer, FleetCommand, Message, ReportedState, Status
from shared.mqtt import Received
from shared.requests import RequestServer
from shared.runtime import Runtime
from shared.topics import Kind, every_site, fleet_commands, parse

PUBLISH_TIMEOUT_S = 30.0

NAME = "fleet"
__all__ = ["NAME", "Config", "check", "main"]

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


async def main(config: Config) -> None:
    fleet = await asyncio.to_thread(Fleet.open, config)
    topic = fleet_commands(config.prefix)
    queue: asyncio.Queue[Received] = asyncio.Queue(maxsize=config.workers * 16)

    async def handle(request: FleetCommand, message: Received) -> Message:
        result = await asyncio.to_thread(commands.run, fleet, request.cmd, request.args)
        return FleetAnswer(ok=True, result=result.model_dump(mode="json"))

    async with Runtime(NAME, config) as rt:
        server = RequestServer(rt, topic, FleetCommand.from_wire, handle, refuse)
        loop = asyncio.get_running_loop()

        def publish(topic: str, wire: dict[str, Any]) -> None:
            """From a handler's thread: one retained QoS 1 publish, acked (or buffered)."""
            future = asyncio.run_coroutine_threadsafe(
                rt.publish(topic, wire, qos=1, retain=True), loop
            )
            result = future.result(PUBLISH_TIMEOUT_S)
            if not result.ok:
                raise FleetError("publish_failed", f"{topic}: the broker refused: {result.reason}")

        fleet.publish = publish

        observed: asyncio.Queue[nodes.Observation] = asyncio.Queue(maxsize=100_000)

        async def on_status(message: Received) -> None:
            site = parse(message.topic).site
            status = Status.from_wire(codec.decode(message.payload, message.content_type))
            await observed.put((site, status))

        async def on_reported(message: Received) -> None:
            site = parse(message.topic).site
            reported = ReportedState.from_wire(codec.decode(message.payload, message.content_type))
            if reported.site != site:
                raise PayloadError(f"a reported state for site {reported.site!r} on {site}'s topic")
            await observed.put((site, reported))

        async def watch_loop() -> None:
            """Store what agents publish: whatever has arrived meanwhile goes in one batch."""
            while True:
                batch = [await observed.get()]
                while not observed.empty() and len(batch) < 5000:
                    batch.append(observed.get_nowait())
                await asyncio.to_thread(nodes.observe, fleet, batch)

        async def timeout_loop() -> None:
            while True:
                failed = await asyncio.to_thread(deploy.expire, fleet)
                if failed:
                    log.warning("%d node(s) timed out in their deployment", failed)
                await asyncio.sleep(config.deploy_check_interval_s)

        async def republish() -> None:
            count = await asyncio.to_thread(deploy.republish, fleet)
            log.info("published the latest desired state of %d node(s) again", count)

        async def enqueue(message: Received) -> None:
            await queue.put(message)  # full: the dispatch loop waits (back-pressure)

        async def command_loop() -> None:
            while True:
                message = await queue.get()
                await server.on_request(message)

        async def sweep_loop() -> None:
            while True:
                removed = await asyncio.to_thread(fleet.sweep)
                if removed:
                    log.info("removed %d staged upload(s) never committed", removed)
                await asyncio.sleep(config.sweep_interval_s)

        def health() -> dict[str, Any]:
            return {
                "commands": server.stats.as_dict(),
                "queued": queue.qsize(),
                "observations_queued": observed.qsize(),
            }

        await rt.subscribe(topic, enqueue)
        await rt.subscribe(every_site(Kind.STATUS, config.prefix, "agent"), on_status)
        await rt.subscribe(every_site(Kind.REPORTED, config.prefix), on_reported)
        rt.add_health("fleet", health)
        log.info(
            "fleet serving %s: db %s, S3 %s bucket %s, signing key %s",
            topic,
            config.db,
            config.s3.endpoint,
            config.s3.bucket,
            fleet.signing_key.public.key_id if fleet.signing_key else "none (no deploy)",
        )
        await rt.serve(
            *([command_loop] * config.workers), sweep_loop, timeout_loop, watch_loop, republish
        )
