"""Interlocks: which rows of a result batch may be acted on at all.

A row is acted on only if it is new (its time is after every result seen: a duplicate or a
replayed result never causes a second write), fresh (younger than `max_result_age_ms`), from the
deployed model (the sha256 pinned in config, else the one in the inference instance's retained
status), and while that instance says it is online.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from services.actuator.config import ActuatorConfig
from shared.health import InferenceHealth
from shared.messages import ResultBatch, Status


class Interlocks:
    def __init__(self, config: ActuatorConfig) -> None:
        self.config = config
        self.inference_state: str | None = None  # online / stopped / offline; None: never seen
        self.deployed_sha256: str | None = None
        self.last_t = -(2**63)  # newest sample time seen
        self.suppressed: Counter[str] = Counter()

    def on_status(self, status: Status) -> None:
        self.inference_state = status.state
        inference = InferenceHealth.of(status)
        if inference is not None and inference.model.sha256:
            self.deployed_sha256 = inference.model.sha256

    def batch_reason(self, batch: ResultBatch) -> tuple[str, str] | None:
        """A (key, reason) that blocks every row of the batch, or None."""
        cfg = self.config
        if cfg.require_inference_online and self.inference_state != "online":
            state = self.inference_state or "unknown (no status seen)"
            return "inference_not_online", f"{cfg.inference_instance} is {state}"
        expected = cfg.model_sha256 or self.deployed_sha256
        if expected is None:
            return "model_unknown", f"deployed model unknown: no sha256 in {cfg.inference_instance}"
        if batch.model.sha256 != expected:
            where = "pinned in config" if cfg.model_sha256 else "deployed"
            return "wrong_model", (
                f"result from model {batch.model.name} {batch.model.version} "
                f"sha256 {batch.model.sha256[:12]}…, {where} is {expected[:12]}…"
            )
        return None

    def check(self, batch: ResultBatch, now_ns: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Trusted rows (a mask), and the reasons for the others: {key: (count, reason, id)}."""
        t = batch.t
        n = len(batch)
        # duplicates: at or before the newest time seen, or repeated inside the batch
        seen = t <= self.last_t
        _, first = np.unique(t, return_index=True)
        repeated = np.ones(n, bool)
        repeated[first] = False
        duplicate = seen | repeated
        if n:
            self.last_t = max(self.last_t, int(t.max()))
        age_ms = (now_ns - t) / 1e6
        stale = ~duplicate & (age_ms > self.config.max_result_age_ms)
        ok = ~duplicate & ~stale
        out: dict[str, Any] = {}
        if duplicate.any():
            i = int(np.argmax(duplicate))
            out["duplicate"] = (
                int(duplicate.sum()),
                "duplicate or replayed result (not newer than the last one seen)",
                batch.ids[i],
            )
        if stale.any():
            i = int(np.argmax(stale))
            out["stale"] = (
                int(stale.sum()),
                f"result {age_ms[i]:.0f} ms old, limit {self.config.max_result_age_ms:g} ms",
                batch.ids[i],
            )
        if ok.any() and (blocked := self.batch_reason(batch)) is not None:
            key, reason = blocked
            out[key] = (int(ok.sum()), reason, batch.ids[int(np.argmax(ok))])
            ok[:] = False
        for key, (count, _, _) in out.items():
            self.suppressed[key] += count
        return ok, out

    def still_fresh(self, t_ns: int, now_ns: int) -> bool:
        return (now_ns - t_ns) / 1e6 <= self.config.max_result_age_ms
