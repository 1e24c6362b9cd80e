"""What the fleet demo watches: the cloud broker (results and the actuator's events each
station's forwarder delivers) and one station's own broker (its scores, for the detection)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared import clock, codec
from shared.errors import EdgefleetError
from shared.messages import ResultBatch
from shared.mqtt import Received
from shared.topics import Kind, parse


@dataclass
class CloudFeed:
    """Counts per station of what reached the cloud broker; the events, with when they came."""

    results: Counter[str] = field(default_factory=Counter)
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)  # (t, site, e)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, message: Received) -> None:
        try:
            topic = parse(message.topic)
            body = codec.decode(message.payload, message.content_type)
        except EdgefleetError:
            return  # not ours to judge: the fleet service reports bad input
        if not isinstance(body, dict):
            return
        if topic.kind == Kind.RESULTS:
            self.results[topic.site] += len(body.get("t", []))
        elif topic.kind == Kind.EVENTS:
            self.events.append((clock.monotonic(), topic.site, body))
            self.changed.set()

    def acted(self, site: str, since: float) -> float | None:
        """When the first `acted` event of `site` at or after `since` reached the cloud."""
        return next(
            (
                t
                for t, s, e in self.events
                if s == site and t >= since and e.get("decision") == "acted"
            ),
            None,
        )


@dataclass
class Scores:
    """The anomaly scores a station's inference publishes, with when the demo saw them."""

    threshold: float
    seen: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, max score)

    async def on_message(self, message: Received) -> None:
        try:
            batch = ResultBatch.from_wire(codec.decode(message.payload, message.content_type))
        except EdgefleetError:
            return
        score = batch.outputs.get("score")
        if score is not None and len(score):
            self.seen.append((clock.monotonic(), float(np.max(np.asarray(score, float)))))

    def first_above(self, since: float) -> float | None:
        return next((t for t, s in self.seen if t >= since and s > self.threshold), None)

    def median(self, start: float, end: float) -> float | None:
        during = [s for t, s in self.seen if start <= t < end]
        return float(np.median(during)) if during else None
