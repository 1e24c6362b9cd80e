"""The state machine of one action, pure: no I/O, time passed in.

    idle ──when × for_samples──▶ set due ──written──▶ active ──reset.when × for_samples──▶ reset due
      ▲                                                                                    │
      └───────────────────────────────────── written ◀─────────────────────────────────────┘

A due transition that is suppressed (cooldown, rate limit) or whose write fails leaves the state
as it was and the streak counted, so it is tried again on the next sample that still meets the
condition. While active only the reset condition is watched (hysteresis: `when` and `reset.when`
are separate thresholds). Without a reset, the output latches until the safe state or a hold.
A held rule is suspended: it neither counts nor decides until released. A streak counts the
results of one model: when trusted results of another come (a swap), the streaks start again.
At start the rule assumes the output is in its reset state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Transition = Literal["set", "reset"]
WINDOW_S = 60.0


@dataclass
class Rule:
    for_samples: int
    reset_samples: int | None  # None: no reset (the output latches)
    cooldown_s: float = 0.0
    max_per_minute: int = 1_000_000
    active: bool = False
    held: bool = False
    set_streak: int = 0
    reset_streak: int = 0
    last_write: float = float("-inf")
    writes: deque[float] = field(default_factory=deque)

    def observe(self, when: bool, reset: bool) -> Transition | None:
        """Count one sample; return the transition that is due, if any."""
        if self.held:
            return None
        if not self.active:
            self.set_streak = self.set_streak + 1 if when else 0
            return "set" if self.set_streak >= self.for_samples else None
        if self.reset_samples is None:
            return None
        self.reset_streak = self.reset_streak + 1 if reset else 0
        return "reset" if self.reset_streak >= self.reset_samples else None

    def gate(self, now: float) -> str | None:
        """Why a write may not go out now (cooldown, rate limit), or None."""
        since = now - self.last_write
        if since < self.cooldown_s:
            return f"cooldown: last write {since:.2f} s ago, cooldown {self.cooldown_s:g} s"
        while self.writes and now - self.writes[0] >= WINDOW_S:
            self.writes.popleft()
        if len(self.writes) >= self.max_per_minute:
            return f"rate limit: {len(self.writes)} writes in the last minute"
        return None

    def attempted(self, now: float) -> None:
        """A write went out (whatever its outcome): it counts for cooldown and rate limit."""
        self.last_write = now
        self.writes.append(now)

    def done(self, kind: Transition) -> None:
        """The transition took effect (written and read back, or simulated)."""
        self.active = kind == "set"
        self.set_streak = self.reset_streak = 0

    def force(self, active: bool) -> None:
        """The output was put in a known state from outside the rule (safe state, hold)."""
        self.active = active
        self.set_streak = self.reset_streak = 0

    def new_model(self) -> None:
        """Results of another model come: the streaks counted the last one's scores, which
        say nothing in the new one's terms, so they start again (the state stays)."""
        self.set_streak = self.reset_streak = 0

    def hold(self) -> None:
        self.held = True
        self.set_streak = self.reset_streak = 0

    def release(self) -> None:
        self.held = False
        self.set_streak = self.reset_streak = 0
