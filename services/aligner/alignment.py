"""The alignment engine: independent reading streams in, fixed-period samples out. No I/O.

`Aligner.ingest(batch, now_ns)` files a `ReadingBatch` into per-signal buffers; `emit(now_ns)`
returns the samples that are due as one column-wise `SampleBatch` (or None). The semantics are
written down in docs/aligner.md; the comments here say why the code is shaped as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from services.aligner.config import AlignSpec
from services.aligner.kernels import MISSING, Block, Periods, fill
from services.aligner.store import Packed, ReadingStore
from services.aligner.windows import Windower
from shared.errors import ConfigError
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
    unused: int = 0  # signals this flow does not read
    unusable: int = 0  # bad quality or NaN: never used as a value
    ahead: int = 0  # stamped further ahead of the local clock than max_ahead: not held
    ahead_ms: float = 0.0  # how far ahead the furthest of them was


@dataclass
class AlignStats:
    """Running totals, for the service's status and logs."""

    batches: int = 0
    readings: int = 0
    late: int = 0
    duplicate: int = 0  # same signal and time as a reading already held: changed nothing
    unused: int = 0
    unusable: int = 0
    samples: int = 0  # grid points decided
    emitted: int = 0  # samples (or windows) published
    incomplete: int = 0  # grid points with a missing feature
    skipped_grid: int = 0  # grid points jumped over after a forward jump of the local clock
    late_by_source: dict[str, int] = field(default_factory=dict)
    ahead: int = 0
    ahead_by_source: dict[str, int] = field(default_factory=dict)
    ahead_skew_ms: dict[str, float] = field(default_factory=dict)  # the latest seen, per source


class Aligner:
    """One flow's alignment state. Not thread-safe; one event loop drives it."""

    def __init__(
        self,
        flow: str,
        spec: AlignSpec,
        start_ns: int | None = None,
        max_ahead_ns: int | None = None,
    ) -> None:
        self.flow = flow
        # A reading stamped further ahead of the local clock is not held: the grid follows the
        # local clock, so it would wait (in memory) until then; a source whose clock runs far
        # ahead would hold readings without bound. None: no cap (replays without a clock).
        self.max_ahead_ns = max_ahead_ns
        self.spec = spec
        self.stats = AlignStats()
        self._period = p = spec.period_ns
        self._delay = spec.max_delay_ns
        self._labels = spec.labels
        self._sig_index: dict[str, int] = {}
        for f in spec.features:
            self._sig_index.setdefault(f.signal, len(self._sig_index))
        n_sig = len(self._sig_index)
        self._store = ReadingStore(n_sig)
        fsig = np.array([self._sig_index[f.signal] for f in spec.features], np.intp)
        fage = np.array([f.max_age_ns or 0 for f in spec.features], np.int64)
        # Features grouped by rule, so each rule is one vectorized call for all its features.
        self._fills = []
        for kind in ("hold", "linear", "nearest"):
            cols = np.array([i for i, f in enumerate(spec.features) if f.fill == kind], np.intp)
            if cols.shape[0]:
                self._fills.append((kind, cols, fsig[cols], fage[cols]))
        agg_cols = [i for i, f in enumerate(spec.features) if f.agg is not None]
        self._agg_sig = np.unique(fsig[agg_cols]) if agg_cols else np.empty(0, np.intp)
        self._aggs = []
        for kind in ("mean", "min", "max", "rms", "last", "count", "std"):
            cols = np.array([i for i in agg_cols if spec.features[i].agg == kind], np.intp)
            if cols.shape[0]:
                self._aggs.append((kind, cols, np.searchsorted(self._agg_sig, fsig[cols])))
        # "Can every feature be decided?" is three numpy calls over these.
        self._feat_sig = fsig
        self._feat_linear = np.array([f.fill == "linear" for f in spec.features], np.bool_)
        self._feat_nearest = np.array([f.fill == "nearest" for f in spec.features], np.bool_)
        self._feat_age = fage
        self._progress = np.full(n_sig, NEVER, np.int64)  # newest reading of any quality
        self._latest_good = np.full(n_sig, NEVER, np.int64)  # newest usable reading
        # Readings as far back as this before a sample time can still be used.
        self._lookback = max(int(fage.max()), p) + p
        span = (1 << self._store.shift) - 2 * self._lookback
        self._max_points = min(MAX_EMIT, span // p - 1)
        if self._max_points < 1:
            raise ConfigError(f"flow {flow!r}: period_ms and max_age_ms are too large together")
        self._luts: dict[tuple[str, tuple[str, ...]], npt.NDArray[np.intp]] = {}
        self._max_q = Quality.UNCERTAIN if spec.accept_uncertain else Quality.GOOD
        self._defaults = np.array(spec.defaults(), np.float64)
        self._windows = Windower(spec.window, spec.stride, spec.on_missing == "skip")
        self._next_k: int | None = None if start_ns is None else -(-start_ns // p)
        self._emitted_t = NEVER

    @property
    def features(self) -> list[str]:
        return list(self._labels)

    @property
    def emitted_until_ns(self) -> int | None:
        """The last sample time decided; readings at or before it are late."""
        return None if self._emitted_t == NEVER else self._emitted_t

    @property
    def held(self) -> int:
        """Readings held (a measure of memory, bounded by max_age, max_delay and the rates)."""
        return len(self._store)

    def _lut(self, source: str, signals: list[str]) -> npt.NDArray[np.intp]:
        key = (source, tuple(signals))
        lut = self._luts.get(key)
        if lut is None:
            if len(self._luts) > 1024:  # a source renaming signals forever must not grow this
                self._luts.clear()
            idx = [self._sig_index.get(f"{source}/{name}", -1) for name in signals]
            lut = self._luts[key] = np.array(idx, np.intp)
        return lut

    def ingest(self, batch: ReadingBatch, now_ns: int) -> IngestCounts:
        """File a batch that passed `ReadingBatch.check()`. A fixed number of numpy calls: no
        Python work per reading or per signal."""
        counts = IngestCounts()
        n = len(batch)
        st = self.stats
        st.batches += 1
        st.readings += n
        if batch.complete_ns is not None:
            self._complete(batch, now_ns)
        if n == 0:
            return counts
        m = self._lut(batch.source, batch.signals)[batch.sig]
        t, v, q = batch.t, batch.value, batch.q
        used = m >= 0
        keep = used & (t > self._emitted_t)
        n_used, n_keep = int(np.count_nonzero(used)), int(np.count_nonzero(keep))
        counts.unused, counts.late = n - n_used, n_used - n_keep
        ahead = None if self.max_ahead_ns is None else keep & (t > now_ns + self.max_ahead_ns)
        if ahead is not None and ahead.any():
            counts.ahead = int(np.count_nonzero(ahead))
            counts.ahead_ms = round((int(t[ahead].max()) - now_ns) / 1e6, 3)
            keep &= ~ahead
            n_keep -= counts.ahead
        if n_keep == 0:
            self._count(batch.source, counts)
            return counts
        if n_keep < n:
            m, t, v, q = m[keep], t[keep], v[keep], q[keep]
        if self._next_k is None:
            # The grid starts with the first data, but never after the local clock: a source
            # whose clock runs ahead must not push every other source into the past.
            self._next_k = -(-min(int(t.min()), now_ns) // self._period)
        good = (q <= self._max_q) & np.isfinite(v)
        counts.accepted = n_keep
        counts.unusable = n_keep - int(np.count_nonzero(good))
        np.maximum.at(self._progress, m, t)
        if counts.unusable:
            np.maximum.at(self._latest_good, m[good], t[good])
        else:
            np.maximum.at(self._latest_good, m, t)
        self._store.add(m, t, v, good)
        self._count(batch.source, counts)
        return counts

    def _complete(self, batch: ReadingBatch, now_ns: int) -> None:
        """The adapter says every reading of the batch's signals up to `complete_ns` has been
        sent: their progress moves there, so an unchanged signal no longer holds samples back.
        Never past the local clock: samples are not decided ahead of time."""
        lut = self._lut(batch.source, batch.signals)
        sig = lut[lut >= 0]
        if sig.shape[0]:
            upto = min(int(batch.complete_ns or NEVER), now_ns)
            np.maximum.at(self._progress, sig, upto)

    def _count(self, source: str, counts: IngestCounts) -> None:
        st = self.stats
        st.late += counts.late
        st.unused += counts.unused
        st.unusable += counts.unusable
        if counts.late:
            st.late_by_source[source] = st.late_by_source.get(source, 0) + counts.late
        if counts.ahead:
            st.ahead += counts.ahead
            st.ahead_by_source[source] = st.ahead_by_source.get(source, 0) + counts.ahead
            st.ahead_skew_ms[source] = counts.ahead_ms

    def decided_until_ns(self) -> int:
        """Latest time at which every feature can be decided from what has arrived, assuming
        each signal's readings arrive in time order (docs/aligner.md, "When to emit")."""
        prog = self._progress[self._feat_sig]  # p: every reading up to p has arrived
        good = self._latest_good[self._feat_sig]  # g: the newest usable reading
        age = self._feat_age
        # For t_k in (g, p] the value can only come from g or from a reading after p.
        # linear: decided once no reading after p could bracket t_k with g (p - g >= max_age).
        linear = np.where(prog - good >= age, prog, good)
        # nearest: decided while g is at least as close as anything after p could be, or
        # anything after p would be beyond max_age.
        nearest = np.maximum(good, np.minimum(prog, np.maximum((prog + good) // 2, prog - age)))
        decided = np.where(self._feat_linear, linear, np.where(self._feat_nearest, nearest, prog))
        return int(decided.min())

    def due(self, now_ns: int) -> bool:
        """Whether `emit(now_ns)` would decide a sample (cheap: no reading is touched)."""
        if self._next_k is None:
            return False
        k = (now_ns - self._delay) // self._period
        if self.spec.early_emit:
            k = max(k, self.decided_until_ns() // self._period)
        return k >= self._next_k

    def next_deadline_ns(self) -> int | None:
        """Local time at which the next sample is due even if data is missing."""
        if self._next_k is None:
            return None
        return self._next_k * self._period + self._delay

    def emit(self, now_ns: int) -> SampleBatch | None:
        """Decide every sample that is due at local time `now_ns`; None when none is.
        At most `MAX_EMIT` grid points per call: call again while it returns samples."""
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
        k_hi = min(k_hi, self._next_k + self._max_points - 1)
        grid = np.arange(self._next_k, k_hi + 1, dtype=np.int64) * p
        packed, dups = self._store.pack(int(grid[0]) - self._lookback)
        self.stats.duplicate += dups
        x, state, age = self._compute(packed, grid)
        self._next_k = k_hi + 1
        self._emitted_t = int(grid[-1])
        self._store.trim(self._emitted_t)
        return self._package(grid, x, state, age)

    def _compute(self, packed: Packed, grid: I64) -> Block:
        n, f = grid.shape[0], len(self._labels)
        x = np.empty((f, n), np.float64)
        state = np.empty((f, n), np.uint8)
        age = np.empty((f, n), np.float32)
        for kind, cols, sig, max_age in self._fills:
            x[cols], state[cols], age[cols] = fill(packed, kind, sig, max_age, grid)
        if self._aggs:
            periods = Periods(packed, self._agg_sig, grid, self._period)
            for kind, cols, rows in self._aggs:
                x[cols], state[cols], age[cols] = periods.block(kind, rows)
        return x.T, state.T, age.T

    def _package(
        self, grid: I64, x: np.ndarray, state: np.ndarray, age: np.ndarray
    ) -> SampleBatch | None:
        missing = state == MISSING
        complete = ~missing.any(axis=1)
        self.stats.samples += grid.shape[0]
        self.stats.incomplete += int(grid.shape[0] - np.count_nonzero(complete))
        if self.spec.on_missing == "default" and not complete.all():
            x = np.where(missing, self._defaults, x)
            state = np.where(missing, _DEFAULT, state)
        k0 = int(grid[0] // self._period)
        out = self._windows.push(
            k0,
            grid,
            x.astype(np.float32),
            np.ascontiguousarray(state),
            np.ascontiguousarray(age),
            complete,
        )
        if out is None:
            return None
        t, xw, sw, aw = out
        self.stats.emitted += t.shape[0]
        return SampleBatch(self.flow, list(self._labels), t, xw, sw, aw)
