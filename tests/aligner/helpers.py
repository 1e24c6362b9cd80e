"""Building batches and running the engine the way the service does, for the aligner tests."""

from __future__ import annotations

import numpy as np

from services.aligner.alignment import Aligner
from services.aligner.config import AlignSpec
from shared.messages import Quality, ReadingBatch, SampleBatch
from tests.aligner.reference import MS, R

__all__ = ["MS", "Collected", "R", "batches_of", "drain", "spec_of"]


def spec_of(features: list[dict[str, object]], **align: object) -> AlignSpec:
    return AlignSpec.model_validate(
        {"period_ms": 100, "max_delay_ms": 250, **align, "features": features}
    )


def batches_of(items: list[tuple[str, R]]) -> list[ReadingBatch]:
    """One batch per run of consecutive readings from the same source, order kept."""
    out: list[ReadingBatch] = []
    run: list[tuple[str, R]] = []

    def flush() -> None:
        if not run:
            return
        source = run[0][0].partition("/")[0]
        names = sorted({sig.partition("/")[2] for sig, _ in run})
        out.append(
            ReadingBatch.from_columns(
                source,
                names,
                [r.t for _, r in run],
                [names.index(sig.partition("/")[2]) for sig, _ in run],
                [r.v for _, r in run],
                [Quality.GOOD if r.good else Quality.BAD for _, r in run],
            )
        )
        run.clear()

    for sig, r in items:
        if run and run[0][0].partition("/")[0] != sig.partition("/")[0]:
            flush()
        run.append((sig, r))
    flush()
    return out


class Collected:
    """Every sample an engine emitted, concatenated."""

    def __init__(self) -> None:
        self.batches: list[SampleBatch] = []

    def add(self, out: SampleBatch | None) -> None:
        if out is not None:
            out.check()
            self.batches.append(out)

    def _cat(self, name: str) -> np.ndarray:
        return np.concatenate([getattr(b, name) for b in self.batches])

    @property
    def t(self) -> np.ndarray:
        return self._cat("t") if self.batches else np.empty(0, np.int64)

    @property
    def x(self) -> np.ndarray:
        return self._cat("x")

    @property
    def state(self) -> np.ndarray:
        return self._cat("state")

    @property
    def age(self) -> np.ndarray:
        return self._cat("age_ms")


def drain(engine: Aligner, now_ns: int, into: Collected) -> None:
    """Emit until nothing more is due at `now_ns` (emit decides at most MAX_EMIT per call)."""
    while True:
        before = engine.emitted_until_ns
        into.add(engine.emit(now_ns))
        if engine.emitted_until_ns == before:
            return
