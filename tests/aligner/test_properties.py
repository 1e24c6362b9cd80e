"""Properties of the alignment engine, checked against the slow reference implementation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.aligner.alignment import Aligner
from services.aligner.config import AlignSpec
from shared.messages import FeatureState
from tests.aligner.helpers import MS, Collected, R, batches_of, drain, spec_of
from tests.aligner.reference import reference

FILLS = ["hold", "linear", "nearest"]
AGGS = ["mean", "min", "max", "rms", "last", "count", "std"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EARLY = -(2**62)  # a local clock that never reaches a deadline: only early emission acts


@st.composite
def readings_st(draw: st.DrawFn, max_n: int = 30) -> list[R]:
    """One signal's readings in time order: ms-aligned times (so some fall on the grid), with
    no, few or many bad ones (a bad reading moves a signal on without giving a value)."""
    bad_in_10 = draw(st.sampled_from([0, 1, 5]))
    times = sorted(draw(st.sets(st.integers(0, 1500), max_size=max_n)))
    out = []
    for t in times:
        v = draw(
            st.one_of(st.floats(-1e3, 1e3), st.just(math.nan))
            if draw(st.integers(0, 9)) == 0
            else st.floats(-1e3, 1e3)
        )
        out.append(R(t * MS, v, draw(st.integers(0, 9)) >= bad_in_10))
    return out


@st.composite
def scenario_st(
    draw: st.DrawFn, future_within_delay: bool = False, rules: list[str] | None = None
) -> tuple[AlignSpec, dict[str, list[R]]]:
    period = draw(st.sampled_from([10, 25, 50, 100]))
    delay = draw(st.integers(1 if future_within_delay else 0, 300))
    signals = [f"{'ab'[i % 2]}/s{i}" for i in range(draw(st.integers(1, 4)))]
    features: list[dict[str, object]] = []
    for sig in signals:
        for _ in range(draw(st.integers(1, 2))):
            rule = draw(st.sampled_from(rules or FILLS + AGGS))
            feat: dict[str, object] = {"signal": sig, "name": f"f{len(features)}"}
            if rule in FILLS:
                age = draw(st.integers(1, 400))
                if future_within_delay and rule != "hold":
                    age = min(age, delay)  # the reading after t_k then arrives by the deadline
                feat.update(fill=rule, max_age_ms=age)
            else:
                feat["agg"] = rule
            features.append(feat)
    spec = spec_of(features, period_ms=period, max_delay_ms=delay, on_missing="nan")
    return spec, {sig: draw(readings_st()) for sig in signals}


def check(spec: AlignSpec, data: dict[str, list[R]], got: Collected, last_k: int) -> None:
    """The engine emitted exactly the grid 0..last_k, equal to the reference."""
    grid = [k * spec.period_ns for k in range(last_k + 1)]
    assert got.t.tolist() == grid
    x, state, age = reference(spec, data, grid)
    np.testing.assert_array_equal(got.state, state)
    np.testing.assert_allclose(got.x, x.astype(np.float32), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got.age, age.astype(np.float32), rtol=1e-6, atol=1e-6)


def final_k(spec: AlignSpec, data: dict[str, list[R]]) -> int:
    last = max((r.t for rs in data.values() for r in rs), default=0)
    return last // spec.period_ns + 1


@settings(SETTINGS, max_examples=300)
@given(scenario_st(), st.data())
def test_interleaving_keeps_samples(
    scenario: tuple[AlignSpec, dict[str, list[R]]], data: st.DataObject
) -> None:
    """Any interleaving of the signals (each keeping its own order), in any batches, with
    early emission after every batch, gives the samples the reference gives for all data."""
    spec, readings = scenario
    queues = {sig: list(rs) for sig, rs in readings.items()}
    items: list[tuple[str, R]] = []
    while any(queues.values()):
        sig = data.draw(st.sampled_from(sorted(s for s, q in queues.items() if q)))
        items.append((sig, queues[sig].pop(0)))
    engine, got = Aligner("f", spec, start_ns=0), Collected()
    for batch in batches_of(items):
        engine.ingest(batch, EARLY)
        drain(engine, EARLY, got)
    k = final_k(spec, readings)
    drain(engine, k * spec.period_ns + spec.max_delay_ns, got)
    assert engine.stats.late == 0
    check(spec, readings, got, k)


@SETTINGS
@given(scenario_st(future_within_delay=True), st.data())
def test_shuffle_within_delay_keeps_samples(
    scenario: tuple[AlignSpec, dict[str, list[R]]], data: st.DataObject
) -> None:
    """Early emission off: readings delivered in any order, each before the deadline of the
    first sample that needs it, give the same samples as all data at once."""
    spec = scenario[0].model_copy(update={"early_emit": False})
    readings = scenario[1]
    p, d = spec.period_ns, spec.max_delay_ns
    k_end = final_k(spec, readings)
    ticks: list[list[tuple[str, R]]] = [[] for _ in range(k_end + 1)]
    for sig, rs in readings.items():
        for r in rs:
            latest = max(0, -(-(r.t - d) // p))  # first tick whose deadline is at or after t
            ticks[data.draw(st.integers(0, latest))].append((sig, r))
    engine, got = Aligner("f", spec, start_ns=0), Collected()
    for k, items in enumerate(ticks):
        shuffled = data.draw(st.permutations(items))
        for batch in batches_of(shuffled):
            engine.ingest(batch, k * p + d - 1)
        drain(engine, k * p + d, got)
    assert engine.stats.late == 0
    check(spec, readings, got, k_end)


@SETTINGS
@given(
    st.lists(st.integers(0, 2000), min_size=2, max_size=40, unique=True),
    st.floats(-100, 100),
    st.floats(-1, 1),
    st.sampled_from([10, 50, 100]),
)
def test_linear_of_linear_signal_is_exact(
    times: list[int], a: float, b: float, period: int
) -> None:
    spec = spec_of(
        [{"signal": "a/x", "fill": "linear", "max_age_ms": 10_000}],
        period_ms=period,
        on_missing="nan",
    )
    rs = [R(t * MS, a + b * t) for t in sorted(times)]
    engine, got = Aligner("f", spec, start_ns=0), Collected()
    for batch in batches_of([("a/x", r) for r in rs]):
        engine.ingest(batch, EARLY)
    drain(engine, rs[-1].t + spec.max_delay_ns, got)
    t_ms = got.t / MS
    inside = (t_ms >= rs[0].t / MS) & (t_ms <= rs[-1].t / MS)
    assert (got.state[inside] != FeatureState.MISSING).all()
    assert (got.state[~inside] == FeatureState.MISSING).all()
    np.testing.assert_allclose(got.x[inside, 0], a + b * t_ms[inside], rtol=1e-5, atol=1e-4)


@SETTINGS
@given(
    st.lists(st.integers(1, 2000), min_size=1, max_size=40, unique=True),
    st.integers(1, 500),
    st.sampled_from(["hold", "nearest", "linear"]),
)
def test_fill_never_looks_beyond_max_age(times: list[int], max_age: int, rule: str) -> None:
    """Each reading's value is its own time, so the value shows where it came from: hold never
    uses a reading after t_k, and no fill uses one beyond max_age (or bridges a longer gap)."""
    spec = spec_of(
        [{"signal": "a/x", "fill": rule, "max_age_ms": max_age}], period_ms=10, on_missing="nan"
    )
    rs = [R(t * MS, float(t)) for t in sorted(times)]
    engine, got = Aligner("f", spec, start_ns=0), Collected()
    for batch in batches_of([("a/x", r) for r in rs]):
        engine.ingest(batch, EARLY)
    drain(engine, rs[-1].t + 10**9, got)
    t_ms = got.t / MS
    ok = got.state[:, 0] != FeatureState.MISSING
    assert (got.age[ok, 0] <= max_age).all()
    if rule == "hold":
        assert (got.x[ok, 0] <= t_ms[ok]).all()
        np.testing.assert_allclose(got.age[ok, 0], t_ms[ok] - got.x[ok, 0])
    if rule == "nearest":
        assert (np.abs(got.x[ok, 0] - t_ms[ok]) <= max_age).all()
    if rule == "linear":  # the two readings around t_k are at most max_age apart
        arr = np.array(sorted(times))
        for tk in t_ms[ok]:
            i = np.searchsorted(arr, tk, side="right") - 1
            assert arr[i] == tk or arr[i + 1] - arr[i] <= max_age
    # ... and a value is missing only when no reading was close enough.
    for tk, is_ok in zip(t_ms, ok, strict=True):
        near = [t for t in times if abs(t - tk) <= max_age and (t <= tk or rule != "hold")]
        if rule != "linear":
            assert is_ok == bool(near)


@SETTINGS
@given(readings_st(max_n=60), st.sampled_from(AGGS), st.sampled_from([10, 50, 100, 300]))
def test_aggregates_equal_numpy(rs: list[R], agg: str, period: int) -> None:
    spec = spec_of([{"signal": "a/x", "agg": agg}], period_ms=period, on_missing="nan")
    engine, got = Aligner("f", spec, start_ns=0), Collected()
    for batch in batches_of([("a/x", r) for r in rs]):
        engine.ingest(batch, EARLY)
    k_end = 1500 // period + 1
    drain(engine, k_end * spec.period_ns + spec.max_delay_ns, got)
    aggregates: dict[str, Callable[[np.ndarray], Any]] = {
        "mean": np.mean,
        "min": np.min,
        "max": np.max,
        "std": np.std,
        "count": len,
        "last": lambda a: a[-1],
        "rms": lambda a: np.sqrt(np.mean(a * a)),
    }
    fn = aggregates[agg]
    for tk, x in zip(got.t.tolist(), got.x[:, 0].tolist(), strict=True):
        vals = np.array(
            [r.v for r in rs if tk - spec.period_ns < r.t <= tk and r.good and math.isfinite(r.v)]
        )
        if vals.size == 0 and agg != "count":
            assert math.isnan(x)
        else:
            assert math.isclose(x, float(np.float32(fn(vals))), rel_tol=1e-5, abs_tol=1e-4)


@SETTINGS
@given(scenario_st(), st.integers(2, 4), st.integers(1, 3), st.data())
def test_windows_are_consecutive_samples(
    scenario: tuple[AlignSpec, dict[str, list[R]]], window: int, stride: int, data: st.DataObject
) -> None:
    """A window ending at t_k holds exactly the W samples up to t_k, whichever emit calls
    they were decided in; windows end where k % stride == 0."""
    spec, readings = scenario
    items = [(sig, r) for sig, rs in readings.items() for r in rs]
    items.sort(key=lambda item: item[1].t)
    k = final_k(spec, readings)
    end = k * spec.period_ns + spec.max_delay_ns
    rows, wins = Collected(), Collected()
    engines = (
        (Aligner("f", spec, start_ns=0), rows),
        (
            Aligner("f", spec.model_copy(update={"window": window, "stride": stride}), start_ns=0),
            wins,
        ),
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(items)), max_size=4)))
    for engine, into in engines:
        for lo, hi in zip([0, *cuts], [*cuts, len(items)], strict=True):
            for batch in batches_of(items[lo:hi]):
                engine.ingest(batch, EARLY)
            drain(engine, EARLY, into)
        drain(engine, end, into)
    ks = [int(t) // spec.period_ns for t in wins.t] if wins.batches else []
    assert ks == [j for j in range(window - 1, k + 1) if j % stride == 0]
    for i, j in enumerate(ks):
        np.testing.assert_array_equal(wins.x[i], rows.x[j - window + 1 : j + 1])
        np.testing.assert_array_equal(wins.state[i], rows.state[j - window + 1 : j + 1])
