"""The one shape of an edgefleet service.

A service package is `config.py` (its pydantic config, a `ServiceConfig`) and `service.py`,
which holds its main class `<X>Service(Service[XConfig])` and, at the bottom:

    async def main(config: XConfig) -> None:        # prepares what must fit before connecting
        await run(NAME, config, lambda rt: XService(rt, config))

    SPEC = ServiceSpec(NAME, XConfig, main, check)  # what `edgefleet run NAME` reads

`run` is the skeleton: a `Runtime` → `service.start()` (subscriptions, before the connection
runs, so `online` means subscribed) → the health section → one TaskGroup of the service's named
loops beside the runtime's, until SIGTERM/SIGINT → stop hooks, loops cancelled, `stopped` →
`service.close()`. Every task belongs to that TaskGroup: background work goes through
`rt.spawn`, never a bare `asyncio.create_task`.

Live config, the same for every service: a retained `config/{instance}` newer than the running
revision is merged over the running config and validated (`shared.config.merge_config`). If it
changes only the service's `live_keys`, `service.reconfigure` applies it in place and the status
names the new revision; if it changes any other key, the service stops cleanly and the process
exits with `RESTART_EXIT_CODE` (75), on which `edgefleet up` restarts the instance at once with
that revision written into its config file. A config that does not validate is refused on the
errors topic and the running revision keeps running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from shared.config import ServiceConfig, changed_keys, merge_config
from shared.errors import ConfigError, EdgefleetError
from shared.health import HealthModel
from shared.runtime import Loop, Runtime

C = TypeVar("C", bound=ServiceConfig)
log = logging.getLogger(__name__)

# sysexits' EX_TEMPFAIL ("try again"): the instance stopped cleanly to run a newer config; the
# supervisor restarts it at once, with no backoff, since nothing failed.
RESTART_EXIT_CODE = 75


class RestartForConfig(EdgefleetError):
    """Raised by `run` after a clean stop: config `revision` changes keys that need a restart."""

    def __init__(self, revision: int, keys: list[str]) -> None:
        super().__init__(f"config revision {revision} changes {keys}: restarting to apply it")
        self.revision, self.keys = revision, keys


class Service(Generic[C]):
    """Base of every service's main class. Override what the service has; the rest is empty."""

    health_section: ClassVar[str | None] = None  # its key in the status health; None: none
    # Config keys a newer retained revision may change while it runs (`reconfigure`); a change
    # of any other key restarts the instance. Subclasses add theirs: `Service.live_keys | {...}`.
    live_keys: ClassVar[frozenset[str]] = frozenset({"log_level"})

    def __init__(self, rt: Runtime, config: C) -> None:
        self.rt, self.config = rt, config

    async def start(self) -> None:
        """Subscribe and register callbacks; runs before the connection and the loops."""

    def loops(self) -> dict[str, Loop]:
        """The service's long-running tasks by name (`*_loop`), run in the runtime's TaskGroup."""
        return {}

    def health(self) -> HealthModel | dict[str, Any]:
        """The service's section of the status health (`health_section`)."""
        return {}

    async def reconfigure(self, new: C, changed: set[str]) -> None:
        """Apply `new`, which differs from `self.config` in `changed` (a subset of `live_keys`).
        Overrides apply their keys, then call this (it sets the config and the log level)."""
        if "log_level" in changed:
            logging.getLogger().setLevel(new.log_level.upper())
        self.config = new

    async def close(self) -> None:
        """Release what `__init__`/`start` opened; runs after the loops stopped (not when
        `start` raised: it cleans up after itself)."""


@dataclass(frozen=True)
class ServiceSpec(Generic[C]):
    """The module contract of a service, read by `edgefleet run` and the site (one per module,
    as `SPEC`)."""

    name: str
    config: type[C]
    main: Callable[[C], Coroutine[Any, Any, None]]
    check: Callable[[C], None] | None = None  # what `--check` validates beyond the config model
    service: type[Service[C]] | None = None  # its main class, for what it changes live

    @property
    def live_keys(self) -> frozenset[str]:
        """The config keys a running instance applies from a newer retained revision."""
        return (self.service or Service).live_keys


async def run(
    name: str, config: C, build: Callable[[Runtime], Service[C]], *, manual_ack: bool = False
) -> None:
    """Run one service instance until SIGTERM/SIGINT (or `rt.stop`)."""
    rt = Runtime(name, config, manual_ack=manual_ack)
    service = build(rt)
    restart: list[RestartForConfig] = []

    async def take(update: dict[str, Any], revision: int) -> None:
        try:
            new = merge_config(service.config, update, revision)
        except ConfigError as exc:
            rt.errors.error(f"{exc}; revision {rt.revision} keeps running")
            return
        changed = changed_keys(service.config, new)
        needs_restart = sorted(changed - service.live_keys)
        if needs_restart:
            restart.append(RestartForConfig(revision, needs_restart))
            log.warning("%s", restart[-1])
            rt.stop.set()
            return
        await service.reconfigure(new, changed)
        rt.revision = revision
        log.info("config revision %d applied live: %s", revision, sorted(changed) or "no change")
        rt.announce_soon()

    await rt.on_config(take)
    await service.start()
    if service.health_section is not None:
        rt.add_health(service.health_section, service.health)
    try:
        await rt.serve(service.loops())
    finally:
        await service.close()
    if restart:
        raise restart[0]
