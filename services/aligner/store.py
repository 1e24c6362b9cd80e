"""Reading storage for all of a flow's signals: an arrival log plus one array sorted by signal.

`add` appends a batch's columns to the log: O(1) numpy calls, nothing per signal. `pack` (once per
emit) merges the log into the sorted store with one stable sort on a composite key
`signal << shift | time - base`, drops repeated (signal, time) readings keeping the first, and
returns the usable readings as one `Packed` view in which every signal is a contiguous run.
Fill and aggregate then search all signals in a single `searchsorted`. `trim` keeps what a
later sample can still use, so memory is bounded by max_age, max_delay and the reading rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
IP = npt.NDArray[np.intp]


@dataclass
class Packed:
    """Usable readings, sorted by (signal, time); signal s is `[first[s], first[s + 1])`."""

    key: I64
    t: I64
    v: F64
    first: IP
    shift: int
    base: int

    def keys(self, sig: IP, times: I64) -> I64:
        """Search keys for (signal, time) pairs; broadcasting like numpy."""
        top = (1 << self.shift) - 1
        return (sig.astype(np.int64) << self.shift) + np.clip(times - self.base, 0, top)


class ReadingStore:
    def __init__(self, n_signals: int) -> None:
        self.n = n_signals
        # Room for the signal index in the top bits of a non-negative int64.
        self.shift = 62 - max(1, int(n_signals).bit_length())
        self._log: list[tuple[IP, I64, F64, B]] = []
        self._sig: IP = np.empty(0, np.intp)
        self._t: I64 = np.empty(0, np.int64)
        self._v: F64 = np.empty(0, np.float64)
        self._good: B = np.empty(0, np.bool_)

    def __len__(self) -> int:
        return int(self._t.shape[0]) + sum(int(c[1].shape[0]) for c in self._log)

    def add(self, sig: IP, t: I64, v: F64, good: B) -> None:
        self._log.append((sig, t, v, good))

    def pack(self, base: int) -> tuple[Packed, int]:
        """Merge the log; return the usable readings and how many repeats were dropped."""
        dups = 0
        if self._log:
            parts = [(self._sig, self._t, self._v, self._good), *self._log]
            self._log = []
            sig = np.concatenate([p[0] for p in parts])
            t = np.concatenate([p[1] for p in parts])
            v = np.concatenate([p[2] for p in parts])
            good = np.concatenate([p[3] for p in parts])
            key = self._key(sig, t, base)
            # Timsort (kind="stable") is near linear on the sorted store plus runs of new data.
            order = np.argsort(key, kind="stable")
            s_sig, s_t = sig[order], t[order]
            same_sig = s_sig[1:] == s_sig[:-1]
            if not bool((~same_sig | (s_t[1:] >= s_t[:-1])).all()):
                # Times beyond the key's span tie on the clipped key: sort on the real times
                # (lexsort is stable too, so the first of repeated readings still wins).
                order = np.lexsort((t, sig))
                s_sig, s_t = sig[order], t[order]
                same_sig = s_sig[1:] == s_sig[:-1]
            sig, t = s_sig, s_t
            repeat = np.zeros(t.shape[0], np.bool_)
            repeat[1:] = same_sig & (t[1:] == t[:-1])
            dups = int(np.count_nonzero(repeat))
            keep = ~repeat
            self._sig, self._t = sig[keep], t[keep]
            self._v, self._good = v[order][keep], good[order][keep]
        g = self._good
        sig, t, v = (
            (self._sig, self._t, self._v) if g.all() else (self._sig[g], self._t[g], self._v[g])
        )
        first = np.searchsorted(sig, np.arange(self.n + 1)).astype(np.intp)
        return Packed(self._key(sig, t, base), t, v, first, self.shift, base), dups

    def _key(self, sig: IP, t: I64, base: int) -> I64:
        top = (1 << self.shift) - 1
        return (sig.astype(np.int64) << self.shift) + np.clip(t - base, 0, top)

    def trim(self, emitted_t: int) -> None:
        """Keep, per signal, the last usable reading at or before `emitted_t` (hold, linear and
        nearest may still use it) and every reading after it. Call right after `pack`."""
        sig, t, good = self._sig, self._t, self._good
        if t.shape[0] == 0:
            return
        after = t > emitted_t
        # The last usable reading at or before emitted_t of each signal: the last index of each
        # signal's run among the usable, not-after readings.
        old = np.flatnonzero(good & ~after)
        last_old = old[np.r_[sig[old][1:] != sig[old][:-1], True]] if old.shape[0] else old
        keep = after
        keep[last_old] = True
        if not keep.all():
            self._sig, self._t = sig[keep], t[keep]
            self._v, self._good = self._v[keep], good[keep]
