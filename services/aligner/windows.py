"""Windows of W consecutive samples with a stride, for sequence models.

A window ends at grid point k when k % stride == 0, so which windows exist depends on the epoch
grid only, not on when the service started. A window needs W consecutive grid points; with
`on_missing: skip` every one of them must be complete.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
Out = tuple[I64, np.ndarray, np.ndarray, np.ndarray]


class Windower:
    """Keeps the last W-1 samples so a window can span two emit calls."""

    def __init__(self, window: int, stride: int, skip_incomplete: bool) -> None:
        self.window = window
        self.stride = stride
        self.skip_incomplete = skip_incomplete
        self._hist: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._hist_last_k = 0

    def reset(self) -> None:
        """Forget the history: the next samples do not follow the previous ones."""
        self._hist = None

    def push(
        self,
        k0: int,
        grid: I64,
        x: np.ndarray,
        state: np.ndarray,
        age: np.ndarray,
        complete: npt.NDArray[np.bool_],
    ) -> Out | None:
        """Add samples for grid points k0, k0+1, ...; return the windows (or rows) to emit."""
        n, w = grid.shape[0], self.window
        k = k0 + np.arange(n, dtype=np.int64)
        due = k % self.stride == 0
        if w == 1:
            sel = due & complete if self.skip_incomplete else due
            if not sel.any():
                return None
            if sel.all():
                return grid, x, state, age
            return grid[sel], x[sel], state[sel], age[sel]
        if self._hist is not None and self._hist_last_k == k0 - 1:
            hx, hs, ha, hc = self._hist
            x = np.concatenate((hx, x))
            state = np.concatenate((hs, state))
            age = np.concatenate((ha, age))
            complete = np.concatenate((hc, complete))
        h = x.shape[0] - n
        keep = max(0, x.shape[0] - (w - 1))
        self._hist = (x[keep:], state[keep:], age[keep:], complete[keep:])
        self._hist_last_k = int(k[-1])
        ends = h + np.arange(n)
        sel = due & (ends >= w - 1)
        if self.skip_incomplete:
            bad = np.concatenate(([0], np.cumsum(~complete)))
            starts = np.maximum(ends - w + 1, 0)
            sel &= bad[ends + 1] == bad[starts]
        if not sel.any():
            return None
        idx = (ends[sel] - w + 1)[:, None] + np.arange(w)
        return grid[sel], x[idx], state[idx], age[idx]
