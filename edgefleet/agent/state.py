"""The agent's own state on disk: what runs (current), what to go back to (last good), and the
revision being applied (pending, with its step). Written with `write_atomic`, so a SIGKILL or a
power cut at any step leaves the previous state or the next one, never half of one.

On start, a pending revision means the agent died while applying it: `recover()` drops it, so
the node goes on with `current` (the last revision that passed its health gate); the retained
desired state, still newer, is then applied again from the start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigError
from shared.files import write_atomic
from shared.messages import now_ns

log = logging.getLogger(__name__)

Step = Literal["received", "downloading", "verifying", "activating"]


class Revision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    revision: int = Field(ge=0)
    deployment: str | None = None
    desired: dict[str, Any] = Field(default_factory=dict)  # the verified desired state, as sent
    at: int = Field(default_factory=now_ns)

    def blobs(self) -> set[str]:
        """sha256 of every blob this revision uses."""
        return {
            r["sha256"]
            for flow in self.desired.get("flows", [])
            for r in [*flow.get("resources", []), flow.get("shadow")]
            if isinstance(r, dict) and "sha256" in r
        }


class Pending(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Revision
    step: Step
    since: int = Field(default_factory=now_ns)


class AgentState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    current: Revision | None = None
    last_good: Revision | None = None
    pending: Pending | None = None
    # the newest revision taken in, also one that failed or was rolled back: the retained desired
    # state seen again after a reconnect is then not applied again
    taken: int = Field(default=0, ge=0)
    # the keys a signed desired state told this node to trust (a key rotation); they replace
    # site.yaml's `fleet.trusted_keys` from then on. None: site.yaml's.
    trusted_keys: list[str] | None = None

    def _revisions(self) -> list[Revision]:
        pending = self.pending.target if self.pending else None
        return [r for r in (self.current, self.last_good, pending) if r is not None]

    @property
    def revision(self) -> int:
        """The newest revision this node has taken in (applied, or being applied)."""
        return max([self.taken, *(r.revision for r in self._revisions())])

    def kept_revisions(self) -> set[int]:
        """Revisions whose deployed folder stays: what runs, what a rollback goes back to,
        and what is being applied."""
        return {r.revision for r in self._revisions()}

    def keep(self) -> set[str]:
        """Blobs the cache must keep: those of current, last good and pending."""
        return set().union(*(r.blobs() for r in self._revisions()))

    def begin(self, target: Revision) -> AgentState:
        return self.model_copy(
            update={
                "pending": Pending(target=target, step="received"),
                "taken": max(self.taken, target.revision),
            }
        )

    def step(self, step: Step) -> AgentState:
        assert self.pending is not None, "no revision is being applied"
        return self.model_copy(update={"pending": self.pending.model_copy(update={"step": step})})

    def applied(self) -> AgentState:
        """The pending revision passed its health gate: it runs now, the old one is last good."""
        assert self.pending is not None, "no revision is being applied"
        last_good = self.current or self.last_good
        return AgentState(
            current=self.pending.target,
            last_good=last_good,
            pending=None,
            taken=self.taken,
            trusted_keys=self.trusted_keys,
        )

    def rolled_back_to(self, back: Revision | None) -> AgentState:
        """The pending revision failed its health gate and `back` runs again: current, or the
        last good when current could not run again, or None (no deployed revision runs)."""
        if back is not None and self.current is not None and back.revision == self.current.revision:
            return self.abandoned()
        return self.model_copy(update={"pending": None, "current": back, "last_good": None})

    def abandoned(self) -> AgentState:
        """The pending revision failed (or was cut short): current stays."""
        return self.model_copy(update={"pending": None})


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AgentState:
        if not self.path.exists():
            return AgentState()
        try:
            return AgentState.model_validate_json(self.path.read_bytes())
        except ValidationError as exc:
            # write_atomic never leaves half a file: this one was edited or is of another version
            raise ConfigError(f"{self.path}: not an agent state file: {exc}") from None

    def save(self, state: AgentState) -> AgentState:
        write_atomic(self.path, state.model_dump_json(indent=1).encode())
        return state

    def recover(self) -> AgentState:
        """The state after a restart: a revision cut short while being applied is dropped."""
        state = self.load()
        if state.pending is not None:
            log.warning(
                "agent: revision %d was cut short at %s; going on with revision %s",
                state.pending.target.revision,
                state.pending.step,
                state.current.revision if state.current else "none",
            )
            # taken back to what runs: the revision cut short is tried again from the start
            done = [r.revision for r in (state.current, state.last_good) if r is not None]
            state = self.save(state.abandoned().model_copy(update={"taken": max(done, default=0)}))
        return state
