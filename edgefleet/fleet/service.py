"""The fleet service: the command table served over MQTT v5 request/response.

`edgefleet run fleet --config fleet.yaml`. Commands arrive on `ef/fleet/commands`; a few
workers serve them at once (a commit reads a whole blob and loads a model, which must not hold
up a `library list`); handlers run in threads, SQLite and S3 being blocking. Staged uploads that
were never committed are swept once their URL has expired.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from edgefleet.fleet import commands
from edgefleet.fleet.config import Config
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from shared.errors import EdgefleetError, PayloadError
from shared.messages import FleetAnswer, FleetCommand, Message
from shared.mqtt import Received
from shared.requests import RequestServer
from shared.runtime import Runtime
from shared.topics import fleet_commands

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
            return {"commands": server.stats.as_dict(), "queued": queue.qsize()}

        await rt.subscribe(topic, enqueue)
        rt.add_health("fleet", health)
        log.info(
            "fleet serving %s: db %s, S3 %s bucket %s",
            topic,
            config.db,
            config.s3.endpoint,
            config.s3.bucket,
        )
        await rt.serve(*([command_loop] * config.workers), sweep_loop)
