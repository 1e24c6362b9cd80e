"""Readings of many messages of one source gathered into one ReadingBatch per tick."""

from __future__ import annotations

import numpy as np

from shared.messages import ReadingBatch


class SourceBuffer:
    """Column lists of one source until the next tick; signal names indexed as they come."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.index: dict[str, int] = {}
        self.t: list[int] = []
        self.sig: list[int] = []
        self.value: list[float] = []
        self.q: list[int] = []
        self.first_arrival_ns = 0

    def __len__(self) -> int:
        return len(self.t)

    def _sig(self, name: str) -> int:
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.index)
        return i

    def add(self, name: str, t: int, value: float, q: int, arrival_ns: int) -> None:
        if not self.t:
            self.first_arrival_ns = arrival_ns
        self.t.append(t)
        self.sig.append(self._sig(name))
        self.value.append(value)
        self.q.append(q)

    def add_batch(self, batch: ReadingBatch) -> None:
        if not self.t:
            self.first_arrival_ns = batch.received_ns or 0
        remap = np.array([self._sig(n) for n in batch.signals], np.int64)
        self.t.extend(batch.t.tolist())
        self.sig.extend(remap[batch.sig].tolist())
        self.value.extend(batch.value.tolist())
        self.q.extend(batch.q.tolist())

    def take(self) -> ReadingBatch:
        names = list(self.index)
        batch = ReadingBatch.from_columns(
            self.source,
            names,
            np.array(self.t, np.int64),
            np.array(self.sig, np.uint16),
            np.array(self.value, np.float64),
            np.array(self.q, np.uint8),
            received_ns=self.first_arrival_ns,
        )
        self.index, self.t, self.sig, self.value, self.q = {}, [], [], [], []
        return batch
