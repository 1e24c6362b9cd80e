"""Debug sessions on the node: site topics forwarded, decimated, for a bounded time.

The fleet publishes a signed `DebugSession` retained on `debug/session/{id}` (bridged in). The
agent checks it (signature by a trusted key, this site, not expired, filters it may look at,
its own limits), subscribes the session's filters on a connection of its own, and republishes
what arrives on `debug/data/{id}/{kind}/{name}` (bridged out): per topic at most `rate_hz`
messages per second. It ends the session when its time is up (by itself: the cloud need not
say anything), when the fleet clears the retained request, or when the agent stops; the
filters no open session needs any more are unsubscribed at once. Each change goes out on
`debug/state/{id}` and in the agent's status (`agent.debug`).

Decimation keeps whole messages, the latest of each interval (`Throttle`): a debug view shows
messages as they travelled, byte for byte, never a synthesised one, and the agent decodes
nothing (a dict write per message on the hot topics). A reading or sample batch carries many
values, so a kept message is a continuous stretch of the signal; drawing min/max per pixel is
the viewer's job on what it receives.

Across an agent restart a session goes on until its expiry: the retained request is its only
state, the brokers drop it at expiry (MQTT v5 message expiry) and the agent refuses it past
`expires` anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgefleet.site.model import DebugLimits
from shared import codec
from shared.errors import EdgefleetError, TopicError
from shared.messages import DebugData, DebugSession, DebugState, DebugStep, iso, now_ns
from shared.mqtt import BrokerSettings, MqttConnection, NotConnected, Received
from shared.runtime import Runtime
from shared.signing import PublicKey, SignatureError, verify
from shared.topics import Topics, covers, debug_of, matches

log = logging.getLogger(__name__)

CONNECT_WAIT_S = 5.0


Item = tuple[Received, int]  # a message and when it arrived (ns)


class Throttle:
    """Per topic at most one message per `interval_s`: a message after a quiet interval goes
    at once; within an interval the latest waits for its end (earlier ones are dropped and
    counted), so the last message of a burst always gets through."""

    def __init__(self, interval_s: float) -> None:
        self.interval = interval_s
        self.last: dict[str, float] = {}  # when each topic last sent
        self.pending: dict[str, tuple[Item, int]] = {}  # the latest waiting, dropped before it

    def offer(self, topic: str, item: Item, now: float) -> tuple[Item, int] | None:
        """(item, dropped before it) to send now, or None: it waits (or replaced one)."""
        last = self.last.get(topic)
        if topic not in self.pending and (last is None or now - last >= self.interval):
            self.last[topic] = now
            return item, 0
        waiting = self.pending.get(topic)
        self.pending[topic] = (item, waiting[1] + 1 if waiting else 0)
        return None

    def next_due(self) -> float | None:
        if not self.pending:
            return None
        return min(self.last[t] for t in self.pending) + self.interval

    def due(self, now: float) -> list[tuple[Item, int]]:
        out = []
        for topic, item in list(self.pending.items()):
            if now >= self.last[topic] + self.interval:
                out.append(item)
                self.last[topic] = now
                del self.pending[topic]
        return out

    @property
    def topics(self) -> int:
        return len(self.last)


def minimal(filters: Iterable[str]) -> set[str]:
    """The filters not covered by another: subscribing only these, no message arrives twice
    (a debug filter's kind level is never a wildcard, so two filters overlap only when one
    covers the other)."""
    unique = set(filters)
    return {f for f in unique if not any(g != f and covers(g, f) for g in unique)}


@dataclass
class Open:
    """A session the agent serves now."""

    request: DebugSession
    rate_hz: float
    deadline: float  # time.monotonic()
    expires: int  # ns, wall clock: the earlier of the request's and the agent's limit
    throttle: Throttle
    sent: int = 0
    dropped: int = 0
    seq: int = 0
    overflow: set[str] = field(default_factory=set)  # topics past max_topics

    @property
    def id(self) -> str:
        return self.request.session

    def wants(self, topic: str) -> bool:
        return any(matches(topic, f) for f in self.request.topics)


class Refusal(EdgefleetError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Debugger:
    """The agent's debug sessions: requests on the runtime's connection, data on its own."""

    def __init__(
        self,
        rt: Runtime,
        trusted: list[PublicKey],
        limits: DebugLimits,
        settings: BrokerSettings,
    ) -> None:
        self.rt, self.trusted, self.limits = rt, trusted, limits
        self.topics: Topics = rt.topics
        self.site = self.topics.site
        self.sessions: dict[str, Open] = {}
        self.ended: dict[str, int] = {}  # session → its expiry (ns): never opened again
        self.connection = MqttConnection(settings, self._on_data)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one change of the subscriptions at a time

    async def start(self) -> None:
        await self.rt.subscribe(self.topics.debug_sessions(), self._on_request)

    def loops(self) -> dict[str, Any]:
        return {"agent_debug_mqtt": self.connection.run, "agent_debug": self._timer_loop}

    def health(self) -> list[dict[str, Any]]:
        return [
            {
                "session": s.id,
                "topics": s.request.topics,
                "rate_hz": s.rate_hz,
                "expires": iso(s.expires),
                "sent": s.sent,
                "dropped": s.dropped,
            }
            for s in self.sessions.values()
        ]

    @property
    def subscriptions(self) -> list[str]:
        return sorted(self.connection.subscriptions)

    # ------------------------------------------------------------------ requests

    async def _on_request(self, message: Received) -> None:
        _, _, session = debug_of(message.topic)
        if not message.payload:  # the fleet cleared it: closed
            if session in self.sessions:
                await self._end(self.sessions[session], "closed")
            return
        if session in self.sessions or session in self.ended:
            return  # the retained request again (a reconnect), or a replay of an ended one
        wire = codec.decode(message.payload, message.content_type)
        try:
            opened = self._check(session, wire)
        except Refusal as exc:
            log.warning("agent: debug session %s refused: %s", session, exc)
            self.rt.reject(f"debug session {session} refused ({exc.reason}): {exc}", message)
            expires = wire.get("expires") if isinstance(wire, dict) else None
            self._remember(session, expires if isinstance(expires, int) else now_ns())
            await self._state(session, "refused", reason=str(exc))
            return
        self.sessions[session] = opened
        await self._resubscribe()
        log.info(
            "agent: debug session %s open: %s at %g Hz until %s",
            session,
            ", ".join(opened.request.topics),
            opened.rate_hz,
            iso(opened.expires),
        )
        await self._state(session, "open", opened)
        self.rt.announce_soon()
        self._wake.set()

    def _check(self, session: str, wire: Any) -> Open:
        if not isinstance(wire, dict):
            raise Refusal("malformed", f"a debug session is an object, got {type(wire).__name__}")
        try:
            verify(wire, self.trusted)
        except SignatureError as exc:
            raise Refusal("signature", str(exc)) from None
        try:
            request: DebugSession = DebugSession.from_wire(wire)
        except EdgefleetError as exc:
            raise Refusal("malformed", str(exc)) from None
        if request.site != self.site or request.session != session:
            raise Refusal("wrong_site", f"the request is for {request.site}/{request.session}")
        now = now_ns()
        if request.expires <= now:
            raise Refusal(
                "expired", f"it expired at {iso(request.expires)} (this clock: {iso(now)})"
            )
        for text in request.topics:
            try:
                self.topics.debug_filter(text)
            except TopicError as exc:
                raise Refusal("bad_filter", str(exc)) from None
        if len(self.sessions) >= self.limits.max_sessions:
            raise Refusal(
                "too_many_sessions",
                f"{len(self.sessions)} open, this node allows {self.limits.max_sessions}",
            )
        left = min((request.expires - now) / 1e9, self.limits.max_seconds)
        rate = min(request.rate_hz, self.limits.max_rate_hz)
        return Open(
            request=request,
            rate_hz=rate,
            deadline=time.monotonic() + left,
            expires=now + int(left * 1e9),
            throttle=Throttle(1.0 / rate),
        )

    def _remember(self, session: str, expires: int) -> None:
        now = now_ns()
        self.ended = {s: e for s, e in self.ended.items() if e > now}
        self.ended[session] = max(expires, now + 1)

    async def _end(self, opened: Open, state: DebugStep) -> None:
        if self.sessions.pop(opened.id, None) is None:
            return
        self._remember(opened.id, opened.request.expires)
        opened.dropped += sum(1 + d for _, d in opened.throttle.pending.values())
        await self._resubscribe()
        log.info(
            "agent: debug session %s %s (%d sent, %d dropped)",
            opened.id,
            state,
            opened.sent,
            opened.dropped,
        )
        await self._state(opened.id, state, opened)
        self.rt.announce_soon()

    async def stop(self) -> None:
        """The agent stops: the sessions pause (their retained requests bring them back)."""
        self.sessions.clear()
        with contextlib.suppress(EdgefleetError):
            await self._resubscribe()

    async def _resubscribe(self) -> None:
        # `open` is said once the filters are subscribed; the connection comes up with the
        # agent's, so this wait is short (bounded: the subscription follows on connect anyway)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connection.wait_connected(), CONNECT_WAIT_S)
        async with self._lock:
            wanted = minimal(f for s in self.sessions.values() for f in s.request.topics)
            now = set(self.connection.subscriptions)
            for topic_filter in sorted(now - wanted):
                await self.connection.unsubscribe(topic_filter)
            for topic_filter in sorted(wanted - now):
                await self.connection.subscribe(topic_filter, qos=0)

    async def _state(
        self, session: str, state: DebugStep, opened: Open | None = None, reason: str | None = None
    ) -> None:
        more: dict[str, Any] = {}
        if opened is not None:
            more = {
                "topics": opened.request.topics,
                "rate_hz": opened.rate_hz,
                "expires": opened.expires,
                "sent": opened.sent,
                "dropped": opened.dropped,
            }
        body = DebugState(site=self.site, session=session, state=state, reason=reason, **more)
        await self.rt.publish(self.topics.debug_state(session), body, qos=1)

    # ------------------------------------------------------------------ data

    async def _on_data(self, message: Received) -> None:
        now, item = time.monotonic(), (message, now_ns())
        for opened in list(self.sessions.values()):
            if not opened.wants(message.topic):
                continue
            throttle = opened.throttle
            if message.topic not in throttle.last and throttle.topics >= self.limits.max_topics:
                opened.overflow.add(message.topic)
                opened.dropped += 1
                continue
            waited = message.topic in throttle.pending
            go = throttle.offer(message.topic, item, now)
            if go is not None:
                await self._send(opened, *go)
            elif waited:
                opened.dropped += 1  # it replaced the one that waited
            else:
                self._wake.set()  # a new wait: the timer loop may have to wake earlier

    async def _send(self, opened: Open, item: Item, dropped: int) -> None:
        message, received_ns = item
        opened.seq += 1
        data = DebugData(
            session=opened.id,
            topic=message.topic,
            content_type=message.content_type,
            payload=message.payload,
            t=received_ns,
            seq=opened.seq,
            dropped=dropped,
        )
        payload, content_type = codec.encode(data.to_wire())
        try:
            await self.connection.publish(
                self.topics.debug_data(opened.id, message.topic),
                payload,
                content_type=content_type,
                buffer=False,  # best effort: an outage must not fill the buffer with old views
            )
            opened.sent += 1
        except NotConnected:
            opened.dropped += 1

    async def _timer_loop(self) -> None:
        """Trailing messages at the end of their interval, and sessions at their deadline."""
        while True:
            now = time.monotonic()
            for opened in [s for s in self.sessions.values() if s.deadline <= now]:
                await self._end(opened, "expired")
            for opened in list(self.sessions.values()):
                for item, dropped in opened.throttle.due(now):
                    await self._send(opened, item, dropped)
            times = [s.deadline for s in self.sessions.values()]
            times += [t for s in self.sessions.values() if (t := s.throttle.next_due())]
            self._wake.clear()
            timeout = max(0.0, min(times) - time.monotonic()) if times else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
