"""The alignment engine: independent reading streams in, fixed-period samples out. No I/O.

`Aligner.ingest(batch, now_ns)` files a `ReadingBatch` into per-signal buffers; `emit(now_ns)`
returns the samples that are due as one column-wise `SampleBatch` (or None). The semantics are
written down in docs/aligner.md; the comments here say why the code is shaped as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from services.aligner.buffers import SignalBuffer
from services.aligner.kernels import MISSING, aggregate, fill
from services.aligner.windows import Windower
from shared.flow import AlignSpec, FeatureSpec
from shared.messages import FeatureState, Quality, ReadingBatch, SampleBatch

I64 = npt.NDArray[np.int64]

NEVER = -(2**62)  # "no reading yet": far below any time, yet safe to subtract an age from
MAX_EMIT = 10_000  # grid points per emit call; also the longest catch-up after a clock jump
_DEFAULT = np.uint8(FeatureState.DEFAULT)


@dataclass
class IngestCounts:
    """What became of one batch's readings."""

    accepted: int = 0  # filed for alignment (including unusable ones: they still mark progress)
    late: int = 0  # at or before the last emitted sample time: never merged into the past
    duplicate: int = 0  # same signal and time as a reading already held: changed nothing
    unused: int = 0  # signals this flow does not read
    unusable: int = 0  # bad quality or NaN: never used as a value


@dataclass
class AlignStats:
    """Running totals, for the service's status and logs."""

    batches: int = 0
    readings: int = 0
    late: int = 0
    duplicate: int = 0
    unused: int = 0
    unusable: int = 0
    samples: int = 0  # grid points decided
    emitted: int = 0  # samples (or windows) published
    incomplete: int = 0  # grid points with a missing feature
    skipped_grid: int = 0  # grid points jumped over after a forward jump of the local clock
    late_by_source: dict[str, int] = field(default_factory=dict)


class Aligner:
    """One flow's alignment state. Not thread-safe; one event loop drives it."""

    def __init__(self, flow: str, spec: AlignSpec, start_ns: int | None = None) -> None:
        self.flow = flow
        self.spec = spec
        self.stats = AlignStats()
        self._period = spec.period_ns
        self._delay = spec.max_delay_ns
        self._labels = spec.labels
        self._sig_index: dict[str, int] = {}
        for f in spec.features:
            self._sig_index.setdefault(f.signal, len(self._sig_index))
        n_sig = len(self._sig_index)
        self._buffers = [SignalBuffer() for _ in range(n_sig)]
        self._by_signal: list[list[tuple[int, FeatureSpec]]] = [[] for _ in range(n_sig)]
        for col, f in enumerate(spec.features):
            self._by_signal[self._sig_index[f.signal]].append((col, f))
        # Per-feature arrays so "can every feature be decided?" is three numpy calls.
        self._feat_sig = np.array([self._sig_index[f.signal] for f in spec.features], np.intp)
        needs_next = [f.fill in ("linear", "nearest") for f in spec.features]
        self._feat_next = np.array(needs_next, np.bool_)
        self._feat_age = np.array([f.max_age_ns or 0 for f in spec.features], np.int64)
        self._progress = np.full(n_sig, NEVER, np.int64)  # newest reading of any quality
        self._latest_good = np.full(n_sig, NEVER, np.int64)  # newest usable reading
        self._luts: dict[tuple[str, tuple[str, ...]], npt.NDArray[np.int16]] = {}
        self._max_q = Quality.UNCERTAIN if spec.accept_uncertain else Quality.GOOD
        self._defaults = np.array(spec.defaults(), np.float64)
        self._windows = Windower(spec.window, spec.stride, spec.on_missing == "skip")
        self._next_k: int | None = None if start_ns is None else -(-start_ns // self._period)
        self._emitted_t = NEVER

    @property
    def features(self) -> list[str]:
        return list(self._labels)

    @property
    def sources(self) -> list[str]:
        return self.spec.sources

    @property
    def emitted_until_ns(self) -> int | None:
        """The last sample time decided; readings at or before it are late."""
        return None if self._emitted_t == NEVER else self._emitted_t

    def _lut(self, source: str, signals: list[str]) -> npt.NDArray[np.int16]:
        key = (source, tuple(signals))
        lut = self._luts.get(key)
        if lut is None:
            if len(self._luts) > 1024:  # a source renaming signals forever must not grow this
                self._luts.clear()
            idx = [self._sig_index.get(f"{source}/{name}", -1) for name in signals]
            lut = self._luts[key] = np.array(idx + [-1], np.int16)
        return lut

    def ingest(self, batch: ReadingBatch, now_ns: int) -> IngestCounts:
        """File a batch that passed `ReadingBatch.check()`. Vectorized: Python work is per
        signal present in the batch, never per reading."""
        counts = IngestCounts()
        n = len(batch)
        self.stats.batches += 1
        self.stats.readings += n
        if n == 0:
            return counts
        m = self._lut(batch.source, batch.signals)[batch.sig]
        t, v, q = batch.t, batch.value, batch.q
        if self._next_k is None:
            # The grid starts with the first data, but never after the local clock: a source
            # whose clock runs ahead must not push every other source into the past.
            self._next_k = -(-min(int(t.min()), now_ns) // self._period)
        keep = (m >= 0) & (t > self._emitted_t)
        counts.unused = int(n - np.count_nonzero(m >= 0))
        counts.late = int(n - counts.unused - np.count_nonzero(keep))
        if counts.late:
            by_src = self.stats.late_by_source
            by_src[batch.source] = by_src.get(batch.source, 0) + counts.late
        if not keep.all():
            m, t, v, q = m[keep], t[keep], v[keep], q[keep]
        good = (q <= self._max_q) & np.isfinite(v)
        counts.unusable = int(good.shape[0] - np.count_nonzero(good))
        counts.accepted = int(t.shape[0])
        if counts.accepted:
            counts.duplicate = self._file(m, t, v, good)
        st = self.stats
        st.late += counts.late
        st.duplicate += counts.duplicate
        st.unused += counts.unused
        st.unusable += counts.unusable
        return counts

    def _file(self, m: npt.NDArray[np.int16], t: I64, v: npt.NDArray[np.float64],
              good: npt.NDArray[np.bool_]) -> int:
        # Group by signal: a stable sort of small ints is a radix sort in numpy, O(n), and
        # keeps each signal's arrival order.
        if m.shape[0] > 1 and bool((m[1:] != m[:-1]).any()):
            order = np.argsort(m, kind="stable")
            m, t, v, good = m[order], t[order], v[order], good[order]
            cuts = (np.flatnonzero(m[1:] != m[:-1]) + 1).tolist()
        else:
            cuts = []
        bounds = [0, *cuts, int(m.shape[0])]
        dups = 0
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            s = int(m[a])
            buf = self._buffers[s]
            dups += buf.add(t[a:b], v[a:b], good[a:b])
            self._progress[s] = max(int(self._progress[s]), buf.last_t)
            g = good[a:b]
            tg = t[a:b] if g.all() else t[a:b][g]
            if tg.shape[0]:
                self._latest_good[s] = max(int(self._latest_good[s]), int(tg.max()))
        return dups

    def decided_until_ns(self) -> int:
        """Latest time at which every feature can be decided from what has arrived, assuming
        each signal's readings arrive in time order (docs/aligner.md, "When a sample is emitted")."""
        prog = self._progress[self._feat_sig]
        # linear/nearest also need the first usable reading after t_k, unless the signal has
        # moved beyond t_k + max_age: then no later reading could be used anyway.
        nxt = np.maximum(self._latest_good[self._feat_sig], prog - self._feat_age)
        return int(np.where(self._feat_next, nxt, prog).min())

    def next_deadline_ns(self) -> int | None:
        """Local time at which the next sample is due even if data is missing."""
        if self._next_k is None:
            return None
        return self._next_k * self._period + self._delay

    def emit(self, now_ns: int) -> SampleBatch | None:
        """Decide every sample that is due at local time `now_ns`; None when none is."""
        if self._next_k is None:
            return None
        p = self._period
        k_deadline = (now_ns - self._delay) // p
        k_hi = k_deadline
        if self.spec.early_emit:
            k_hi = max(k_hi, self.decided_until_ns() // p)
        if k_hi < self._next_k:
            return None
        if k_deadline - self._next_k >= MAX_EMIT:
            # The local clock jumped forward (e.g. NTP at boot): do not build a year of samples.
            skip = k_deadline - MAX_EMIT + 1 - self._next_k
            self.stats.skipped_grid += skip
            self._next_k += skip
            self._windows.reset()
        k_hi = min(k_hi, self._next_k + MAX_EMIT - 1)
        grid = np.arange(self._next_k, k_hi + 1, dtype=np.int64) * p
        x, state, age = self._compute(grid)
        self._next_k = k_hi + 1
        self._emitted_t = int(grid[-1])
        for buf in self._buffers:
            buf.trim(self._emitted_t)
        return self._package(grid, x, state, age)

    def _compute(self, grid: I64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, f = grid.shape[0], len(self._labels)
        x = np.empty((n, f), np.float64)
        state = np.empty((n, f), np.uint8)
        age = np.empty((n, f), np.float32)
        for s, feats in enumerate(self._by_signal):
            tg, vg = self._buffers[s].usable()
            for col, spec in feats:
                if spec.agg is not None:
                    column = aggregate(spec.agg, tg, vg, grid, self._period)
                else:
                    assert spec.fill is not None and spec.max_age_ns is not None
                    column = fill(spec.fill, tg, vg, grid, spec.max_age_ns)
                x[:, col], state[:, col], age[:, col] = column
        return x, state, age

    def _package(self, grid: I64, x: np.ndarray, state: np.ndarray,
                 age: np.ndarray) -> SampleBatch | None:
        missing = state == MISSING
        complete = ~missing.any(axis=1)
        self.stats.samples += grid.shape[0]
        self.stats.incomplete += int(grid.shape[0] - np.count_nonzero(complete))
        if self.spec.on_missing == "default" and not complete.all():
            x = np.where(missing, self._defaults, x)
            state = np.where(missing, _DEFAULT, state)
        k0 = int(grid[0] // self._period)
        out = self._windows.push(k0, grid, x.astype(np.float32), state, age, complete)
        if out is None:
            return None
        t, xw, sw, aw = out
        self.stats.emitted += t.shape[0]
        return SampleBatch(self.flow, list(self._labels), t, xw, sw, aw)
