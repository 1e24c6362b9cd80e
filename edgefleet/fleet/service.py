"""The fleet service: the command table served over MQTT v5 request/response.

`edgefleet run fleet --config fleet.yaml`. Commands arrive on `ef/fleet/commands`; a few
workers serve them at once (a commit reads a whole blob and loads a model, which must not hold
up a `library list`); handlers run in threads, SQLite and S3 being blocking. Staged uploads that
were never committed are swept once their URL has expired.
"""

from __future__ import annotations

import asyncio
import logging

from edgefleet.fleet import commands
from edgefleet.fleet.config import Config
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from shared.errors import EdgefleetError, PayloadError
from shared.health import HealthModel
from shared.messages import FleetAnswer, FleetCommand, Message
from shared.mqtt import Received
from shared.requests import RequestServer
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run
from shared.topics import fleet_commands

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
    commands: dict[str, int]  # served, refused, malformed, failed, unanswerable
    queued: int


class FleetService(Service[Config]):
    health_section = "fleet"

    def __init__(self, rt: Runtime, config: Config, fleet: Fleet) -> None:
        super().__init__(rt, config)
        self.fleet = fleet
        self.topic = fleet_commands(config.prefix)
        self.queue: asyncio.Queue[Received] = asyncio.Queue(maxsize=config.workers * 16)
        self.server = RequestServer(rt, self.topic, FleetCommand.from_wire, self.handle, refuse)

    async def start(self) -> None:
        await self.rt.subscribe(self.topic, self.enqueue)
        log.info(
            "fleet serving %s: db %s, S3 %s bucket %s",
            self.topic,
            self.config.db,
            self.config.s3.endpoint,
            self.config.s3.bucket,
        )

    def loops(self) -> dict[str, Loop]:
        workers: dict[str, Loop] = {
            f"command_{i}_loop": self.command_loop for i in range(self.config.workers)
        }
        return {**workers, "sweep_loop": self.sweep_loop}

    def health(self) -> FleetHealth:
        return FleetHealth(commands=self.server.stats.as_dict(), queued=self.queue.qsize())

    async def handle(self, request: FleetCommand, message: Received) -> Message:
        result = await asyncio.to_thread(commands.run, self.fleet, request.cmd, request.args)
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
    await run(NAME, config, lambda rt: FleetService(rt, config, fleet))


SPEC = ServiceSpec(NAME, Config, main, check)
