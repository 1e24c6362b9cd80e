"""The replay's picture: each score over time, its threshold, the labelled anomalies shaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.replay.compare import Scored


def plot(scored: list[Scored], labels: list[tuple[int, int, str]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file, no display: runs on a headless edge node or CI
    import matplotlib.pyplot as plt

    t0 = min((int(s.t[0]) for s in scored if s.t.size), default=0)
    fig, ax = plt.subplots(figsize=(11, 4), dpi=100)
    for i, (start, end, kind) in enumerate(labels):
        ax.axvspan(
            (start - t0) / 1e9,
            (end - t0) / 1e9,
            color="tab:red",
            alpha=0.15,
            label="labelled anomaly" if i == 0 else None,
        )
        ax.text(
            (start - t0) / 1e9,
            1.0,
            f" {kind}",
            transform=ax.get_xaxis_transform(),
            va="top",
            fontsize=8,
            color="tab:red",
        )
    for s, color in zip(scored, ["tab:blue", "tab:orange", "tab:green"], strict=False):
        x = (s.t - t0) / 1e9
        ax.plot(x, s.score, lw=1, color=color, label=s.name)
        ax.axhline(s.threshold, color=color, lw=0.8, ls="--", alpha=0.7)
    ax.set_xlabel("time since start of recording (s)")
    ax.set_ylabel("score")
    if any(np.isfinite(s.score).any() for s in scored):
        ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
