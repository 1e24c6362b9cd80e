"""Per-signal reading buffers: times (int64 ns), values (float64) and a usable mask.

Each buffer is one contiguous slice `[lo, hi)` of preallocated arrays, kept sorted by time.
Appending in time order is a slice copy; trimming moves `lo`; when the tail is full the live
slice is moved to the front (and the arrays doubled only if it still does not fit). Contiguity
is why this is not a wrap-around ring: `searchsorted` then works on one view without copies.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

_INITIAL = 256


class SignalBuffer:
    """The readings of one signal that can still influence a sample not yet emitted."""

    __slots__ = ("_good", "_t", "_v", "hi", "last_t", "lo")

    def __init__(self) -> None:
        self._t: I64 = np.empty(_INITIAL, np.int64)
        self._v: F64 = np.empty(_INITIAL, np.float64)
        self._good: B = np.empty(_INITIAL, np.bool_)
        self.lo = 0
        self.hi = 0
        self.last_t = np.iinfo(np.int64).min  # newest time held, for the in-order fast path

    def __len__(self) -> int:
        return self.hi - self.lo

    @property
    def t(self) -> I64:
        return self._t[self.lo : self.hi]

    @property
    def v(self) -> F64:
        return self._v[self.lo : self.hi]

    @property
    def good(self) -> B:
        return self._good[self.lo : self.hi]

    def usable(self) -> tuple[I64, F64]:
        """Times and values of the usable readings (views when all are usable, the usual case)."""
        g = self.good
        if g.all():
            return self.t, self.v
        return self.t[g], self.v[g]

    def _reserve(self, n: int) -> None:
        if self.hi + n <= self._t.shape[0]:
            return
        live = self.hi - self.lo
        cap = self._t.shape[0]
        while live + n > cap:
            cap *= 2
        if cap != self._t.shape[0]:
            t, v, g = np.empty(cap, np.int64), np.empty(cap, np.float64), np.empty(cap, np.bool_)
        else:
            t, v, g = self._t, self._v, self._good
        # Slice assignment handles the overlap when moving within the same array.
        t[:live] = self._t[self.lo : self.hi]
        v[:live] = self._v[self.lo : self.hi]
        g[:live] = self._good[self.lo : self.hi]
        self._t, self._v, self._good = t, v, g
        self.lo, self.hi = 0, live

    def add(self, t: I64, v: F64, good: B) -> int:
        """Add readings (arrival order); return how many were duplicates and changed nothing."""
        n = t.shape[0]
        if n == 0:
            return 0
        if t[0] > self.last_t and (n == 1 or bool((t[1:] > t[:-1]).all())):
            self._reserve(n)
            self._t[self.hi : self.hi + n] = t
            self._v[self.hi : self.hi + n] = v
            self._good[self.hi : self.hi + n] = good
            self.hi += n
            self.last_t = int(t[-1])
            return 0
        return self._merge(t, v, good)

    def _merge(self, t: I64, v: F64, good: B) -> int:
        # Rare path: out of order or repeated times. A stable sort with the held readings first
        # keeps the first reading of each time, so a repeated reading changes nothing.
        all_t = np.concatenate((self.t, t))
        order = np.argsort(all_t, kind="stable")
        all_t = all_t[order]
        keep = np.ones(all_t.shape[0], np.bool_)
        keep[1:] = all_t[1:] != all_t[:-1]
        all_v = np.concatenate((self.v, v))[order][keep]
        all_g = np.concatenate((self.good, good))[order][keep]
        all_t = all_t[keep]
        dups = int(keep.shape[0] - all_t.shape[0])
        self.lo = self.hi = 0
        self._reserve(all_t.shape[0])
        n = all_t.shape[0]
        self._t[:n], self._v[:n], self._good[:n] = all_t, all_v, all_g
        self.hi = n
        self.last_t = int(all_t[-1])
        return dups

    def trim(self, emitted_t: int) -> None:
        """Drop what no later sample can use: keep the last usable reading at or before
        `emitted_t` (hold, linear and nearest may still need it) and everything after."""
        t = self.t
        cut = int(np.searchsorted(t, emitted_t, side="right"))
        if cut == 0:
            return
        if self._good[self.lo + cut - 1]:
            self.lo += cut - 1
            return
        older = np.flatnonzero(self.good[:cut])
        if older.shape[0] == 0:
            self.lo += cut
            return
        # Bad readings between the last usable one and the cut go; the usable one moves up.
        j = self.lo + int(older[-1])
        new_lo = self.lo + cut - 1
        self._t[new_lo], self._v[new_lo], self._good[new_lo] = self._t[j], self._v[j], True
        self.lo = new_lo
