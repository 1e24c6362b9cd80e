"""The fleet's open debug sessions (`Fleet.debug`), kept apart from the handlers in debug.py so
`Fleet` can hold one without an import cycle."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.messages import DebugSession, now_ns

# topic, wire (None: clear the retained message), message expiry in seconds
Publish = Callable[[str, dict[str, Any] | None, int | None], None]


@dataclass
class Board:
    """The open sessions, as the retained requests on the broker say (and as opened here)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sessions: dict[str, DebugSession] = field(default_factory=dict)
    publish: Publish | None = None  # set by the service: handlers run in threads

    def seen(self, session: str, request: DebugSession | None) -> None:
        with self.lock:
            if request is None:
                self.sessions.pop(session, None)
            else:
                self.sessions[session] = request

    def open_now(self, node: str | None = None) -> list[DebugSession]:
        """Sessions not yet expired (of one node), oldest first; expired ones are forgotten."""
        now = now_ns()
        for sid in [s for s, r in self.sessions.items() if r.expires <= now]:
            del self.sessions[sid]
        found = [r for r in self.sessions.values() if node is None or r.site == node]
        return sorted(found, key=lambda r: r.issued)
