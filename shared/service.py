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
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from shared.config import ServiceConfig
from shared.health import HealthModel
from shared.runtime import Loop, Runtime

C = TypeVar("C", bound=ServiceConfig)


class Service(Generic[C]):
    """Base of every service's main class. Override what the service has; the rest is empty."""

    health_section: ClassVar[str | None] = None  # its key in the status health; None: none

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


async def run(
    name: str, config: C, build: Callable[[Runtime], Service[C]], *, manual_ack: bool = False
) -> None:
    """Run one service instance until SIGTERM/SIGINT (or `rt.stop`)."""
    rt = Runtime(name, config, manual_ack=manual_ack)
    service = build(rt)
    await service.start()
    if service.health_section is not None:
        rt.add_health(service.health_section, service.health)
    try:
        await rt.serve(service.loops())
    finally:
        await service.close()
