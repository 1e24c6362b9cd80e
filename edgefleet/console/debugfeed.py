"""The fleet console's live feed: what the cloud broker carries (statuses, results), and for
anything else of a site a debug session of its agent (`edgefleet/fleet/debug_client.py`):
chosen topics, decimated on the node, for a bounded time, republished on `ef/{site}/debug/...`
and bridged out only while the session lasts. Each forwarded message goes into the live store
under the topic it had on the site, so the timeline and the inspector show it as they would on
the edge."""

from __future__ import annotations

import asyncio
import logging

from edgefleet.console.live import BrokerFeed, LiveStore
from edgefleet.fleet.client import FleetClient
from edgefleet.fleet.debug_client import SessionRefused, watch
from edgefleet.fleet.errors import FleetError
from shared.messages import DebugState
from shared.topics import matches

log = logging.getLogger(__name__)

OPEN_WAIT_S = 15.0  # for the node to say the session is open, before the page is answered


class DebugFeed:
    def __init__(
        self, base: BrokerFeed, fleet: FleetClient, rate_hz: float = 5.0, seconds: float = 300.0
    ) -> None:
        self.base, self.fleet, self.rate_hz, self.seconds = base, fleet, rate_hz, seconds
        self.store: LiveStore | None = None
        self.sessions: set[asyncio.Task[None]] = set()

    def describe(self) -> str:
        return f"{self.base.describe()}; other topics of a site through a debug session"

    async def run(self, store: LiveStore) -> None:
        self.store = store
        try:
            await self.base.run(store)
        finally:
            for task in self.sessions:  # leaving closes each session (debug.close)
                task.cancel()
            await asyncio.gather(*self.sessions, return_exceptions=True)

    async def watch(self, site: str, topics: list[str], author: str) -> str:
        wanted = [t for t in topics if not any(matches(t, f) for f in self.base.filters)]
        if not wanted:
            return await self.base.watch(site, topics, author)
        store = self.store
        if store is None:
            return "the console is still starting: try again in a moment"
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[DebugState | None] = loop.create_future()

        def on_state(state: DebugState) -> None:
            if state.state == "open" and not opened.done():
                opened.set_result(state)

        async def forward() -> None:
            try:
                async for m in watch(
                    self.fleet,
                    site,
                    wanted,
                    self.rate_hz,
                    self.seconds,
                    author=author,
                    on_state=on_state,
                ):
                    if not opened.done():
                        opened.set_result(None)
                    store.ingest(m.topic, m.raw, m.content_type, retain=False)
            except (FleetError, SessionRefused) as exc:
                if not opened.done():
                    opened.set_exception(exc)
                else:
                    log.warning("debug session on %s ended: %s", site, exc)

        task = asyncio.create_task(forward(), name=f"debug_{site}")
        self.sessions.add(task)
        task.add_done_callback(self.sessions.discard)
        try:
            state = await asyncio.wait_for(asyncio.shield(opened), OPEN_WAIT_S)
        except FleetError as exc:
            return f"the fleet refused the debug session: {exc.code}: {exc.message}"
        except SessionRefused as exc:
            return f"the node refused the debug session: {exc}"
        except TimeoutError:
            return (
                f"debug session asked of {site}; the node has not answered within "
                f"{OPEN_WAIT_S:g} s (offline, or its bridge is down): data shows when it comes"
            )
        rate = state.rate_hz if state is not None and state.rate_hz else self.rate_hz
        return (
            f"debug session open on {site}: {', '.join(wanted)}, at most {rate:g} messages/s "
            f"per topic, for {self.seconds:g} s (it ends by itself)"
        )
