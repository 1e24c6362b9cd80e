"""What a replay says about a model: when its score crossed the threshold, how it did against
the labelled anomalies, and — against another flow or model — how far the two agree.

A "decision" is `score > threshold`, per sample. With labels: a sample is positive when any
labelled interval covers its time; precision and recall are per sample; a labelled anomaly is
detected when the score crosses inside the interval (or within `grace_ns` after it), and its
detection delay is the time from the interval's start to that crossing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Scored:
    """A score series of one flow or model over a replay."""

    name: str
    t: np.ndarray[Any, Any]  # int64 ns, ascending
    score: np.ndarray[Any, Any]  # float64
    threshold: float


@dataclass
class Detection:
    kind: str
    start_ns: int
    end_ns: int
    detected: bool
    delay_s: float | None


@dataclass
class Evaluation:
    name: str
    samples: int
    threshold: float
    above: int  # samples with score > threshold
    first_crossing_ns: int | None
    precision: float | None = None
    recall: float | None = None
    detections: list[Detection] = field(default_factory=list)


@dataclass
class Agreement:
    common: int  # samples both have (joined on time)
    decisions_agree: float | None  # share of common samples with the same decision
    score_correlation: float | None  # Pearson
    mean_abs_delta: float | None
    max_abs_delta: float | None


@dataclass
class Report:
    evaluations: list[Evaluation]
    agreement: Agreement | None = None

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = _finite(asdict(self))
        return result


def _finite(obj: Any) -> Any:
    """JSON has no NaN: undefined figures are null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def covered(t: np.ndarray[Any, Any], labels: list[tuple[int, int, str]]) -> np.ndarray[Any, Any]:
    inside = np.zeros(t.shape, bool)
    for start, end, _ in labels:
        inside |= (t >= start) & (t <= end)
    return inside


def evaluate(s: Scored, labels: list[tuple[int, int, str]], grace_ns: int = 0) -> Evaluation:
    above = s.score > s.threshold
    crossings = s.t[above]
    ev = Evaluation(
        s.name,
        int(s.t.shape[0]),
        s.threshold,
        int(above.sum()),
        int(crossings[0]) if crossings.size else None,
    )
    if not labels:
        return ev
    truth = covered(s.t, labels)
    tp = int((above & truth).sum())
    ev.precision = tp / int(above.sum()) if above.any() else None
    ev.recall = tp / int(truth.sum()) if truth.any() else None
    for start, end, kind in labels:
        hit = crossings[(crossings >= start) & (crossings <= end + grace_ns)]
        delay = (int(hit[0]) - start) / 1e9 if hit.size else None
        ev.detections.append(Detection(kind, start, end, bool(hit.size), delay))
    return ev


def agreement(a: Scored, b: Scored) -> Agreement:
    common, ia, ib = np.intersect1d(a.t, b.t, assume_unique=True, return_indices=True)
    n = int(common.shape[0])
    if n == 0:
        return Agreement(0, None, None, None, None)
    sa, sb = a.score[ia], b.score[ib]
    same = (sa > a.threshold) == (sb > b.threshold)
    delta = np.abs(sa - sb)
    corr = None
    if n > 1 and float(np.std(sa)) > 0 and float(np.std(sb)) > 0:
        corr = float(np.corrcoef(sa, sb)[0, 1])
    return Agreement(n, float(same.mean()), corr, float(delta.mean()), float(delta.max()))


def compare(scored: list[Scored], labels: list[tuple[int, int, str]], grace_ns: int = 0) -> Report:
    report = Report([evaluate(s, labels, grace_ns) for s in scored])
    if len(scored) == 2:
        report.agreement = agreement(scored[0], scored[1])
    return report


def render(report: Report) -> str:
    """The report as a table for a terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="replay")
    table.add_column("")
    for ev in report.evaluations:
        table.add_column(ev.name, justify="right")

    def row(label: str, values: list[str]) -> None:
        table.add_row(label, *values)

    evs = report.evaluations
    row("samples", [str(e.samples) for e in evs])
    row("threshold", [f"{e.threshold:g}" for e in evs])
    row("above threshold", [str(e.above) for e in evs])
    row("first crossing", [_time(e.first_crossing_ns) for e in evs])
    if any(e.precision is not None or e.recall is not None for e in evs):
        row("precision", [_pct(e.precision) for e in evs])
        row("recall", [_pct(e.recall) for e in evs])
        for i, det in enumerate(evs[0].detections):
            row(
                f"{det.kind} @ {_time(det.start_ns)}",
                [_delay(e.detections[i]) for e in evs],
            )
    console = Console(width=120, record=True)
    with console.capture() as cap:
        console.print(table)
        if report.agreement is not None:
            a = report.agreement
            console.print(
                f"agreement over {a.common} common samples: decisions {_pct(a.decisions_agree)}, "
                f"score correlation {_num(a.score_correlation)}, "
                f"mean |Δscore| {_num(a.mean_abs_delta)}, max {_num(a.max_abs_delta)}"
            )
    return cap.get()


def _time(t_ns: int | None) -> str:
    if t_ns is None:
        return "never"
    from shared.messages import iso

    return iso(t_ns)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _delay(d: Detection) -> str:
    return f"{d.delay_s:.1f} s" if d.detected and d.delay_s is not None else "missed"
