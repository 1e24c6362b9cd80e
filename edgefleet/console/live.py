"""Live data for the timeline and the inspector: a `LiveFeed` delivers messages into a
`LiveStore`, which keeps per topic its rate and last messages, and per series the last minutes.

The feed is the seam between where the data comes from and what the console does with it:
- `BrokerFeed` subscribes a broker directly: the site broker on an edge node (every topic of
  the site), or the cloud broker (what reaches it: results through the forwarder, statuses).
- `DebugFeed` (cloud mode, debugfeed.py) adds debug sessions: its `watch(site, topics, author)`
  asks the node's agent, through the fleet, to republish those topics decimated on
  `ef/{site}/debug/...` for a bounded time, and hands each republished message to
  `LiveStore.ingest` under the topic it had on the site: the timeline and the inspector need
  no change.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgefleet.console.decimate import minmax_columns
from services.inference.health import numeric_columns
from shared.codec import decode, to_jsonable
from shared.errors import EdgefleetError, TopicError
from shared.mqtt import BrokerSettings, MqttConnection, Received
from shared.topics import Kind, ParsedTopic, matches, parse

log = logging.getLogger(__name__)

LAST_MESSAGES = 20  # per topic, for the inspector
RATE_WINDOW_S = 5.0  # a topic's message rate is measured over this much recent time
SHOWN_ITEMS = 200  # array elements shown per field in the inspector (the rest elided)
SERIES_KINDS = {Kind.RAW, Kind.SAMPLES, Kind.RESULTS, Kind.SHADOW}
ARRIVAL_SLACK_NS = 10_000_000_000  # how far out of time order two batches of a series may come

Chunk = tuple[int, np.ndarray[Any, Any], np.ndarray[Any, Any]]


class LiveFeed(Protocol):
    """Where live messages come from; see the module's docstring."""

    def describe(self) -> str:
        """For the page header: what this console is looking at."""
        ...

    async def watch(self, site: str, topics: list[str], author: str) -> str:
        """Ask for `topics` of `site` on behalf of `author`; what happens, in a sentence (when
        the data will come and until when, or why it cannot)."""
        ...

    async def run(self, store: LiveStore) -> None:
        """Deliver messages into `store` until cancelled."""
        ...


@dataclass(frozen=True)
class Move:
    count: int  # moves of this deployment seen so far
    what: str  # event (the fleet's DeploymentEvent) | reported (a node's report)
    site: str | None  # the reporting node


@dataclass
class Message:
    t_ns: int  # arrival on the console's clock
    payload: bytes
    content_type: str | None
    retain: bool


@dataclass
class TopicStats:
    count: int = 0
    bytes: int = 0
    arrivals: collections.deque[float] = field(default_factory=collections.deque)
    last: collections.deque[Message] = field(
        default_factory=lambda: collections.deque(maxlen=LAST_MESSAGES)
    )
    errors: int = 0  # payloads that did not decode

    def rate(self, now: float) -> float:
        while self.arrivals and self.arrivals[0] < now - RATE_WINDOW_S:
            self.arrivals.popleft()
        return len(self.arrivals) / RATE_WINDOW_S


class Series:
    """One numeric signal's recent values: chunks of (t, v) arrays, oldest dropped by time."""

    def __init__(self, sid: str, label: str, unit: str, kind: str) -> None:
        self.sid, self.label, self.unit, self.kind = sid, label, unit, kind
        # (newest time in the chunk, times, values), in arrival order
        self.chunks: collections.deque[Chunk] = collections.deque()
        self.points = 0
        self.last_t = 0

    def add(self, t: np.ndarray[Any, Any], v: np.ndarray[Any, Any], keep_ns: int) -> None:
        if not len(t):
            return
        newest = int(t.max())
        self.chunks.append((newest, t.astype(np.int64, copy=False), v.astype(np.float64)))
        self.points += len(t)
        self.last_t = max(self.last_t, newest)
        horizon = self.last_t - keep_ns
        while len(self.chunks) > 1 and self.chunks[0][0] < horizon:
            self.points -= len(self.chunks.popleft()[1])

    def since(self, t0: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Every point stamped at or after `t0` (and a few before: whole chunks). Walks from the
        newest chunk back, so a live view's small increments cost little whatever is kept;
        chunks arrive nearly in time order, and a late one within ARRIVAL_SLACK_NS is found."""
        picked = []
        for chunk in reversed(self.chunks):
            if chunk[0] >= t0:
                picked.append(chunk)
            elif chunk[0] < t0 - ARRIVAL_SLACK_NS:
                break
        if not picked:
            return np.empty(0, np.int64), np.empty(0)
        if len(picked) == 1:
            return picked[0][1], picked[0][2]
        return np.concatenate([c[1] for c in picked]), np.concatenate([c[2] for c in picked])


class LiveStore:
    """What the feed delivered, kept for the pages; `ingest` is the only way in."""

    def __init__(self, keep_s: float = 600.0, units: dict[str, str] | None = None) -> None:
        self.keep_ns = int(keep_s * 1e9)
        self.units = units or {}  # `{source}/{signal}` → unit, from site.yaml
        self.topics: dict[str, TopicStats] = {}
        # site → its edgefleet topics, parsed: a page about 1,000 nodes reads each node's
        # statuses without walking every topic of the fleet once per node
        self.by_site: dict[str, dict[str, ParsedTopic]] = {}
        self.series: dict[str, Series] = {}
        self.version = 0  # grows with each ingest: a live view sends only when it moved
        self.rejected = 0
        # Deployments that moved: the fleet's DeploymentEvent (a stage started or held, paused,
        # resumed, aborted, finished) on this topic (the fleet console's), and any node's
        # reported state naming its deployment. A deployment's page refreshes on them.
        self.deployments_topic: str | None = None
        self.moves: dict[str, Move] = {}
        self._moved = asyncio.Event()

    # ------------------------------------------------------------------ in

    def ingest(self, topic: str, payload: bytes, content_type: str | None, retain: bool) -> None:
        now = time.time()
        stats = self.topics.get(topic)
        if stats is None:
            stats = self.topics[topic] = TopicStats()
        stats.count += 1
        stats.bytes += len(payload)
        stats.arrivals.append(now)
        stats.last.append(Message(int(now * 1e9), payload, content_type, retain))
        if topic == self.deployments_topic:
            self._deployment_moved(topic, payload, content_type, "event")
        try:
            parsed = parse(topic)
        except TopicError:
            return  # not an edgefleet topic: shown in the inspector, no series
        if stats.count == 1:
            self.by_site.setdefault(parsed.site, {})[topic] = parsed
        if parsed.kind is Kind.REPORTED and self.deployments_topic is not None:
            self._deployment_moved(topic, payload, content_type, "reported")
        if parsed.kind in SERIES_KINDS and parsed.name is not None:
            try:
                body = decode(payload, content_type)
                self._series_of(topic, parsed.site, parsed.kind, parsed.name, body)
            except (EdgefleetError, KeyError, TypeError, ValueError, IndexError) as exc:
                stats.errors += 1
                self.rejected += 1
                if stats.errors == 1:  # once per topic: a bad publisher repeats itself
                    log.warning("live: %s: cannot read a series from it: %s", topic, exc)
        self.version += 1

    def _deployment_moved(
        self, topic: str, payload: bytes, content_type: str | None, what: str
    ) -> None:
        try:
            body = decode(payload, content_type)
        except EdgefleetError:
            return  # counted by the inspector's decode, like any other topic
        dep = body.get("deployment") if isinstance(body, dict) else None
        if not isinstance(dep, str):
            return  # a reported state of no deployment (the node's own), or not one of ours
        before = self.moves.get(dep)
        self.moves[dep] = Move((before.count if before else 0) + 1, what, body.get("site"))
        self._moved.set()
        self._moved = asyncio.Event()

    async def wait_moved(self, timeout: float) -> None:
        """Until some deployment moves, or `timeout` s."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), timeout)

    def _series_of(self, topic: str, site: str, kind: Kind, name: str, body: Any) -> None:
        if not isinstance(body, dict):
            raise TypeError(f"expected a map, got {type(body).__name__}")
        t = np.asarray(body["t"], dtype=np.int64)
        if kind is Kind.RAW:
            sig, value = np.asarray(body["sig"]), np.asarray(body["value"], dtype=np.float64)
            for i, signal in enumerate(body["signals"]):
                mask = sig == i
                if mask.any():
                    full = f"{name}/{signal}"
                    self._add(
                        f"{topic}#{signal}", f"{site} {full}", full, kind, t[mask], value[mask]
                    )
        elif kind is Kind.SAMPLES:
            x = np.asarray(body["x"], dtype=np.float64)
            x = x[:, -1, :] if x.ndim == 3 else x  # windows: the newest sample of each
            for i, feature in enumerate(body["features"]):
                self._add(f"{topic}#{feature}", f"{site} {name} {feature}", "", kind, t, x[:, i])
        else:
            shadow = " (shadow)" if kind is Kind.SHADOW else ""
            for output, column in numeric_columns(body["outputs"]).items():
                label = f"{site} {name} {output}{shadow}"
                self._add(f"{topic}#{output}", label, "", kind, t, column)

    def _add(
        self,
        sid: str,
        label: str,
        signal: str,
        kind: Kind,
        t: np.ndarray[Any, Any],
        v: np.ndarray[Any, Any],
    ) -> None:
        series = self.series.get(sid)
        if series is None:
            unit = self.units.get(signal, "")
            series = self.series[sid] = Series(sid, label, unit, kind.value)
        series.add(t, v, self.keep_ns)

    # ------------------------------------------------------------------ out

    def site_topics(self, site: str, kind: Kind) -> list[tuple[str, ParsedTopic]]:
        """The topics of `site` of one kind seen so far, with their parts."""
        return [(t, p) for t, p in self.by_site.get(site, {}).items() if p.kind is kind]

    def topic_tree(self, contains: str = "") -> list[dict[str, Any]]:
        now = time.time()
        return [
            {
                "topic": topic,
                "count": s.count,
                "bytes": s.bytes,
                "rate": round(s.rate(now), 2),
                "errors": s.errors,
                "retained": bool(s.last and s.last[-1].retain),
            }
            for topic, s in sorted(self.topics.items())
            if contains in topic
        ]

    def last_messages(self, topic: str, limit: int = LAST_MESSAGES) -> list[dict[str, Any]]:
        stats = self.topics.get(topic)
        if stats is None:
            return []
        out = []
        for m in list(stats.last)[-limit:][::-1]:
            try:
                body, error = shown(decode(m.payload, m.content_type)), None
            except EdgefleetError as exc:
                body, error = None, str(exc)
            out.append(
                {
                    "t_ns": m.t_ns,
                    "content_type": m.content_type,
                    "size": len(m.payload),
                    "retain": m.retain,
                    "body": body,
                    "error": error,
                }
            )
        return out

    def series_list(self) -> list[dict[str, Any]]:
        return [
            {"id": s.sid, "label": s.label, "unit": s.unit, "kind": s.kind, "points": s.points}
            for s in sorted(self.series.values(), key=lambda s: s.sid)
        ]

    def columns(self, ids: Iterable[str], col_ns: int, first: int, count: int) -> dict[str, Any]:
        """Min/max per column of each series (absent ones are left out)."""
        out: dict[str, Any] = {}
        for sid in ids:
            series = self.series.get(sid)
            if series is None:
                continue
            t, v = series.since(first * col_ns)
            lo, hi = minmax_columns(t, v, col_ns, first, count)
            out[sid] = {"min": to_jsonable(lo), "max": to_jsonable(hi), "last_t": series.last_t}
        return out


def shown(body: Any) -> Any:
    """A decoded message as JSON types, long arrays cut to their first SHOWN_ITEMS."""
    if isinstance(body, np.ndarray):
        flat = body.tolist() if body.ndim <= 1 else body.reshape(body.shape[0], -1).tolist()
        if len(flat) > SHOWN_ITEMS:
            return [*to_jsonable(flat[:SHOWN_ITEMS]), f"... {len(flat) - SHOWN_ITEMS} more"]
        return to_jsonable(flat)
    if isinstance(body, dict):
        return {str(k): shown(v) for k, v in body.items()}
    if isinstance(body, list):
        if len(body) > SHOWN_ITEMS:
            return [*(shown(v) for v in body[:SHOWN_ITEMS]), f"... {len(body) - SHOWN_ITEMS} more"]
        return [shown(v) for v in body]
    if isinstance(body, bytes):
        return f"<{len(body)} bytes>"
    return to_jsonable(body)


class BrokerFeed:
    """Every message of `filters` on one broker, straight into the store."""

    def __init__(
        self, settings: BrokerSettings, filters: list[str], what: str, beyond: str = ""
    ) -> None:
        self.settings, self.filters, self.what = settings, filters, what
        self.beyond = beyond  # what to say when asked for topics the filters do not cover

    def describe(self) -> str:
        return self.what

    async def watch(self, site: str, topics: list[str], author: str) -> str:
        covered = [t for t in topics if any(matches(t, f) for f in self.filters)]
        if len(covered) == len(topics):
            return f"{', '.join(topics)}: already on this broker, shown as they arrive"
        missing = ", ".join(t for t in topics if t not in covered)
        return f"{missing}: not on this broker. {self.beyond}".strip()

    async def run(self, store: LiveStore) -> None:
        async def handler(message: Received) -> None:
            store.ingest(message.topic, message.payload, message.content_type, message.retain)

        connection = MqttConnection(self.settings, handler)
        for topic_filter in self.filters:
            await connection.subscribe(topic_filter, qos=0)
        await connection.run()


def units_of(sources: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """`{source}/{point}` → unit, from every `{name, unit}` map in the sources' keys."""
    units: dict[str, str] = {}

    def walk(source: str, node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("name"), str) and isinstance(node.get("unit"), str):
                units[f"{source}/{node['name']}"] = node["unit"]
            for value in node.values():
                walk(source, value)
        elif isinstance(node, list):
            for value in node:
                walk(source, value)

    for name, keys in sources:
        walk(name, keys)
    return units
