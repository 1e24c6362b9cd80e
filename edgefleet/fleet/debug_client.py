"""Watching a node's debug session from the cloud side: the Python API of `edgefleet debug
watch` and the console's live feed.

    async with connect("cloud:1883") as fleet:
        async for message in watch(fleet, "plant1", ["results/#"], rate_hz=5, seconds=120):
            print(message.topic, message.payload)

`watch` opens the session (`debug.open`), yields each forwarded message decoded, and ends when
the session is closed or expires (the agent says so; without a word from it, a few seconds past
its expiry); leaving the loop (break, an exception, Ctrl-C) closes the session. The data comes
on the broker the fleet answers on (the cloud broker, carried there by the site's bridge).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.fleet.client import FleetClient
from edgefleet.fleet.errors import FleetError
from shared import codec
from shared.errors import EdgefleetError
from shared.messages import DebugData, DebugState, iso
from shared.mqtt import MqttConnection, Received
from shared.topics import Topics, debug_of

log = logging.getLogger(__name__)

GRACE_S = 5.0  # past the expiry without the agent's `expired`: the node or the bridge is away


class SessionRefused(EdgefleetError):
    """The node's agent refused the session; `reason` says why in a word."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the node refused the debug session: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class DebugMessage:
    """One message of a site topic, as the agent forwarded it."""

    session: str
    node: str
    topic: str  # the original topic on the site broker
    t: int  # when the agent received it (ns, the node's clock)
    received: int  # when it arrived here (ns)
    content_type: str | None
    payload: Any  # decoded with shared.codec; None when it could not be
    raw: bytes  # the original bytes
    seq: int  # per session, from 1
    dropped: int  # messages of this topic the agent left out since the previous one
    error: str | None = None  # why `payload` could not be decoded

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (arrays as lists, NaN as null), as `edgefleet debug watch` prints."""
        line: dict[str, Any] = {
            "session": self.session,
            "node": self.node,
            "topic": self.topic,
            "t": iso(self.t),
            "seq": self.seq,
            "dropped": self.dropped,
            "content_type": self.content_type,
            "payload": codec.to_jsonable(self.payload),
        }
        if self.error:
            line["error"] = self.error
            line["hex"] = self.raw[:256].hex()
        return line


def _message(node: str, data: DebugData) -> DebugMessage:
    payload: Any = None
    error = None
    try:
        payload = codec.decode(data.payload, data.content_type)
    except EdgefleetError as exc:
        error = str(exc)
    return DebugMessage(
        session=data.session,
        node=node,
        topic=data.topic,
        t=data.t,
        received=time.time_ns(),
        content_type=data.content_type,
        payload=payload,
        raw=data.payload,
        seq=data.seq,
        dropped=data.dropped,
        error=error,
    )


async def watch(
    fleet: FleetClient,
    node: str,
    topics: list[str],
    rate_hz: float = 2.0,
    seconds: float = 60.0,
    *,
    author: str = "",
    on_state: Callable[[DebugState], None] | None = None,
) -> AsyncGenerator[DebugMessage, None]:
    """Open a session, yield its messages until it ends, close it when left early.

    `FleetError` when the fleet refuses (`not_found`, `too_many_sessions`, `too_long`,
    `too_fast`, `bad_filter`), `SessionRefused` when the node does; `on_state` sees each of the
    session's states (open with the limits the node applies, closed, expired)."""
    site = Topics(node, fleet.prefix)
    queue: asyncio.Queue[Received] = asyncio.Queue()
    settings = dataclasses.replace(
        fleet.requester.connection.settings, client_id=f"watch-{uuid.uuid4().hex[:12]}"
    )
    connection = MqttConnection(settings, queue.put)
    # Before the session exists: its first messages may come before `debug.open` answers.
    early = [f"{site.prefix}/{node}/debug/state/+", f"{site.prefix}/{node}/debug/data/+/#"]
    for topic_filter in early:
        await connection.subscribe(topic_filter, qos=1)
    task = asyncio.create_task(connection.run(), name="debug_watch_mqtt")
    session: str | None = None
    ended = False
    try:
        await asyncio.wait_for(connection.wait_connected(), fleet.timeout)
        opened = await fleet.call(
            "debug.open",
            {
                "node": node,
                "topics": topics,
                "rate_hz": rate_hz,
                "seconds": seconds,
                "author": author,
            },
        )
        session = str(opened["session"])
        for topic_filter in site.debug_watch(session):  # then only this session's
            await connection.subscribe(topic_filter, qos=1)
        for topic_filter in early:
            await connection.unsubscribe(topic_filter)
        deadline = time.monotonic() + seconds + GRACE_S
        last_seq = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                message = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            _, part, of = debug_of(message.topic)
            if of != session:
                continue
            body = codec.decode(message.payload, message.content_type)
            if part == "state":
                state = DebugState.from_wire(body)
                if on_state is not None:
                    on_state(state)
                if state.state == "refused":
                    ended = True
                    raise SessionRefused(state.reason or "no reason given")
                if state.state in ("closed", "expired"):
                    ended = True
                    return
                continue
            data = DebugData.from_wire(body)
            if data.seq <= last_seq:  # a copy through both subscriptions at the switch
                continue
            last_seq = data.seq
            yield _message(node, data)
    finally:
        if session is not None and not ended:
            with contextlib.suppress(FleetError):
                await fleet.call("debug.close", {"session": session})
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
