"""One error channel per service, behind one rate limiter.

Everything a person should see go wrong — a rejected message, a handler that raised, a batch
lost to a failing model, a refused swap, a device session that broke — goes out as an
`ErrorReport` on `errors/{instance}` through `ErrorChannel`, counted once in the service's
health. Reports of one kind (topic and the start of the reason) are rate-limited by `RateLimit`:
the first goes at once, the next after `interval_s` with the count of those held back in
between, so a burst of bad input is one WARNING and one report, not thousands.

`RateLimit` is the limiter alone, for anything else that must not repeat itself too often (the
actuator's suppressed-decision events).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from shared import clock as clocks
from shared.messages import ErrorReport
from shared.mqtt import Received

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
EXCERPT_BYTES = 120
KEY_REASON_CHARS = 60  # reasons that differ only after this are one kind (ids, numbers)


@dataclass
class _Count:
    last: float = float("-inf")
    pending: int = 0


class RateLimit(Generic[K]):
    """Per key: the first occurrence passes, then at most one per `interval_s`; each that passes
    carries how many occurrences it stands for (itself and those held back since the last)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = clocks.monotonic) -> None:
        self.interval_s, self.clock = interval_s, clock
        self._keys: dict[K, _Count] = {}

    def hit(self, key: K) -> int:
        """Count one occurrence; the number it stands for if it may pass now, else 0."""
        entry = self._keys.setdefault(key, _Count())
        entry.pending += 1
        return self._take(entry)

    def due(self) -> list[tuple[K, int]]:
        """Keys with occurrences held back whose interval has passed, each with its count."""
        out = []
        for key, entry in self._keys.items():
            if entry.pending and (n := self._take(entry)):
                out.append((key, n))
        return out

    def forget(self, drop: Callable[[K], bool]) -> None:
        """Forget the keys `drop` names: their next occurrence passes at once."""
        self._keys = {k: v for k, v in self._keys.items() if not drop(k)}

    def _take(self, entry: _Count) -> int:
        now = self.clock()
        if now - entry.last < self.interval_s:
            return 0
        n, entry.last, entry.pending = entry.pending, now, 0
        return n


class Counts(Protocol):
    """Where the channel counts (the runtime's health)."""

    rejected: int
    errors: int


@dataclass
class _Last:
    reason: str
    topic: str | None
    excerpt: str | None


def excerpt(payload: bytes) -> str:
    head = payload[:EXCERPT_BYTES]
    text = head.decode("utf-8", "replace") if head.isascii() else head.hex(" ")
    return text + ("…" if len(payload) > EXCERPT_BYTES else "")


class ErrorChannel:
    """Counts, logs and reports what went wrong; `send` publishes one report (it must not block:
    the runtime hands it to a task)."""

    def __init__(
        self,
        instance: str,
        interval_s: float,
        counts: Counts,
        send: Callable[[ErrorReport], None],
    ) -> None:
        self.instance, self.counts, self.send = instance, counts, send
        self.limit: RateLimit[str] = RateLimit(interval_s)
        self._last: dict[str, _Last] = {}

    def reject(self, reason: str, message: Received | None = None) -> None:
        """Input that does not fit: counted as rejected, reported."""
        self.counts.rejected += 1
        self.report(reason, message)

    def error(self, reason: str, message: Received | None = None) -> None:
        """Something failed that should not have (a handler raised, a batch was lost, a
        candidate model was refused): counted as an error, reported."""
        self.counts.errors += 1
        self.report(reason, message)

    def report(
        self, reason: str, message: Received | None = None, *, key: str | None = None
    ) -> None:
        """Reported only (what is counted elsewhere, or is not a count: late data, a session
        that broke). `key` names the kind of report the limiter counts; by default the topic
        and the start of the reason."""
        topic = message.topic if message else None
        key = f"{topic or ''}|{reason[:KEY_REASON_CHARS] if key is None else key}"
        self._last[key] = _Last(reason, topic, excerpt(message.payload) if message else None)
        if n := self.limit.hit(key):
            self._send(key, n)

    def flush(self) -> None:
        """Send what was held back and may go now (the runtime calls it periodically and on
        stop)."""
        for key, n in self.limit.due():
            self._send(key, n)

    def _send(self, key: str, count: int) -> None:
        last = self._last[key]
        log.warning("%d time(s) from %s: %s", count, last.topic or "-", last.reason)
        self.send(
            ErrorReport(
                instance=self.instance,
                topic=last.topic,
                reason=last.reason,
                excerpt=last.excerpt,
                count=count,
            )
        )
