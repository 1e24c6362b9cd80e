"""Edge cases of the alignment engine, one rule each (docs/aligner.md)."""

from __future__ import annotations

import numpy as np
import pytest

from services.aligner.alignment import MAX_EMIT, Aligner
from shared.messages import FeatureState, Quality, ReadingBatch
from tests.aligner.helpers import MS, Collected, R, batches_of, drain, spec_of

HOLD_A = {"signal": "a/x", "fill": "hold", "max_age_ms": 300}
HOLD_B = {"signal": "b/y", "fill": "hold", "max_age_ms": 300}
NEVER = -(2**62)


def feed(engine: Aligner, items: list[tuple[str, R]], now: int = NEVER) -> None:
    for b in batches_of(items):
        engine.ingest(b, now)


def run(engine: Aligner, now: int) -> Collected:
    got = Collected()
    drain(engine, now, got)
    return got


def test_late_readings_are_counted_and_never_merged_into_the_past() -> None:
    engine = Aligner("f", spec_of([HOLD_A], on_missing="nan"), start_ns=0)
    feed(engine, [("a/x", R(50 * MS, 1.0)), ("a/x", R(250 * MS, 2.0))])
    first = run(engine, 0)
    assert first.t.tolist() == [0, 100 * MS, 200 * MS]
    counts = engine.ingest(ReadingBatch.from_columns("a", ["x"], [150 * MS], [0], [9.0]), 0)
    assert counts.late == 1 and engine.stats.late_by_source == {"a": 1}
    later = run(engine, 300 * MS + 250 * MS)
    assert later.t.tolist() == [300 * MS]
    assert later.x[0, 0] == 2.0  # the late 9.0 at 150 ms is not used for later samples either


def test_duplicates_change_nothing() -> None:
    engine = Aligner("f", spec_of([{"signal": "a/x", "agg": "count"}]), start_ns=0)
    feed(engine, [("a/x", R(50 * MS, 1.0)), ("a/x", R(50 * MS, 7.0)), ("a/x", R(60 * MS, 2.0))])
    feed(engine, [("a/x", R(60 * MS, 5.0)), ("a/x", R(100 * MS, 3.0))])
    got = run(engine, NEVER)
    assert got.x[-1, 0] == 3  # 50, 60, 100 ms once each
    assert engine.stats.duplicate == 2
    mean = Aligner("f", spec_of([{"signal": "a/x", "agg": "mean"}]), start_ns=0)
    feed(mean, [("a/x", R(50 * MS, 1.0)), ("a/x", R(50 * MS, 7.0)), ("a/x", R(100 * MS, 3.0))])
    assert run(mean, NEVER).x[-1, 0] == 2.0  # the first reading of a time wins


def test_bad_quality_and_nan_are_never_used_but_mark_progress() -> None:
    engine = Aligner("f", spec_of([HOLD_A, {"signal": "a/x", "agg": "count"}]), start_ns=0)
    feed(
        engine,
        [
            ("a/x", R(20 * MS, 1.0)),
            ("a/x", R(60 * MS, 5.0, good=False)),
            ("a/x", R(80 * MS, float("nan"))),
            ("a/x", R(100 * MS, 6.0, good=False)),
        ],
    )
    got = run(engine, NEVER)  # early emission: the bad reading at 100 ms says a/x is past t_k
    assert got.t.tolist() == [100 * MS]  # (0 ms is skipped: nothing to hold yet)
    assert got.x[0].tolist() == [1.0, 1.0]  # held from 20 ms; one usable reading in the period
    assert got.state[0, 0] == FeatureState.HELD and got.age[0, 0] == 80
    assert engine.stats.unusable == 3


def test_uncertain_readings_can_be_refused() -> None:
    for accept, expected in ((True, 2.0), (False, 1.0)):
        engine = Aligner("f", spec_of([HOLD_A], accept_uncertain=accept), start_ns=0)
        engine.ingest(
            ReadingBatch.from_columns(
                "a",
                ["x"],
                [10 * MS, 90 * MS, 100 * MS],
                [0, 0, 0],
                [1.0, 2.0, 3.0],
                [Quality.GOOD, Quality.UNCERTAIN, Quality.BAD],
            ),
            NEVER,
        )
        assert run(engine, NEVER).x[-1, 0] == expected


def test_out_of_order_reading_is_merged_for_samples_not_yet_emitted() -> None:
    spec = spec_of([{"signal": "a/x", "fill": "linear", "max_age_ms": 1000}], early_emit=False)
    engine = Aligner("f", spec, start_ns=0)
    feed(engine, [("a/x", R(0, 0.0)), ("a/x", R(400 * MS, 4.0)), ("a/x", R(200 * MS, 0.0))])
    got = run(engine, 400 * MS + 250 * MS)
    np.testing.assert_allclose(got.x[:, 0], [0.0, 0.0, 0.0, 2.0, 4.0])


def test_a_source_whose_clock_runs_ahead_does_not_move_the_grid() -> None:
    now = 10_000 * MS
    engine = Aligner("f", spec_of([HOLD_A, HOLD_B], on_missing="nan"))
    feed(engine, [("b/y", R(now + 5_000 * MS, 1.0))], now)  # b's clock is 5 s ahead
    feed(engine, [("a/x", R(now - 50 * MS, 2.0))], now)
    got = run(engine, now + 300 * MS)
    assert got.t.tolist() == [now]  # the grid started at the local clock, not at b's
    assert got.state[0].tolist() == [FeatureState.HELD, FeatureState.MISSING]


def test_a_clock_that_jumps_back_is_late_until_it_passes_the_emitted_time() -> None:
    engine = Aligner("f", spec_of([HOLD_A], on_missing="nan"), start_ns=0)
    feed(engine, [("a/x", R(t * MS, 1.0)) for t in range(0, 1001, 50)])
    run(engine, NEVER)
    assert engine.emitted_until_ns == 1000 * MS
    feed(engine, [("a/x", R(t * MS, 2.0)) for t in range(500, 1501, 50)])  # jumped back 500 ms
    assert engine.stats.late_by_source == {"a": 11}  # 500 .. 1000 ms
    got = run(engine, NEVER)
    assert got.t.tolist() == [k * 100 * MS for k in range(11, 16)]
    assert (got.x[:, 0] == 2.0).all()


def test_on_missing_policies() -> None:
    items = [("a/x", R(100 * MS, 1.0)), ("b/y", R(0, 5.0)), ("b/y", R(500 * MS, 6.0))]
    for policy, extra, rows, x1 in (
        ("skip", {}, [100, 200], None),
        ("nan", {}, [0, 100, 200, 300, 400, 500], [np.nan, 5.0]),
        ("default", {"default": [-1.0, -2.0]}, [0, 100, 200, 300, 400, 500], [-1.0, 5.0]),
    ):
        a = {"signal": "a/x", "fill": "hold", "max_age_ms": 100}
        engine = Aligner(
            "f",
            spec_of([a, {**HOLD_B, "max_age_ms": 1000}], on_missing=policy, **extra),
            start_ns=0,
        )
        feed(engine, items)
        got = run(engine, 500 * MS + 250 * MS)
        assert (got.t // MS).tolist() == rows, policy
        if x1 is not None:  # the sample at 300 ms: a/x too old, b/y held
            np.testing.assert_array_equal(got.x[3], x1)
            expected = FeatureState.MISSING if policy == "nan" else FeatureState.DEFAULT
            assert got.state[3, 0] == expected and np.isnan(got.age[3, 0])


def test_windows_with_stride_span_emit_calls() -> None:
    spec = spec_of([{"signal": "a/x", "agg": "last"}], window=3, stride=2)
    engine = Aligner("f", spec, start_ns=0)
    got = Collected()
    for k in range(10):
        feed(engine, [("a/x", R(k * 100 * MS, float(k)))])
        drain(engine, NEVER, got)
    assert got.x.shape == (4, 3, 1)  # windows ending at k = 2, 4, 6, 8
    assert (got.t // (100 * MS)).tolist() == [2, 4, 6, 8]
    assert got.x[:, :, 0].tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8]]


def test_windows_skip_incomplete_samples() -> None:
    spec = spec_of([{"signal": "a/x", "agg": "last"}], window=2, on_missing="skip")
    engine = Aligner("f", spec, start_ns=0)
    feed(engine, [("a/x", R(k * 100 * MS, float(k))) for k in (0, 1, 2, 4, 5)])
    got = run(engine, NEVER)
    assert (got.t // (100 * MS)).tolist() == [1, 2, 5]  # windows touching k = 3 are skipped


def test_memory_stays_bounded_on_a_long_stream() -> None:
    spec = spec_of([{"signal": "a/x", "agg": "mean"}, HOLD_B])
    engine = Aligner("f", spec, start_ns=0)
    held = []
    for step in range(200):
        t = step * 100 * MS + np.arange(100) * MS
        engine.ingest(ReadingBatch.from_columns("a", ["x"], t, np.zeros(100), t / 1e9), NEVER)
        engine.ingest(ReadingBatch.from_columns("b", ["y"], [t[-1]], [0], [1.0]), NEVER)
        run(engine, NEVER)
        held.append(engine.held)
    assert max(held) < 250 and engine.stats.samples == 200


def test_a_local_clock_jump_forward_is_skipped_not_built() -> None:
    engine = Aligner("f", spec_of([HOLD_A], period_ms=1, on_missing="nan"), start_ns=0)
    feed(engine, [("a/x", R(0, 1.0))])
    got = run(engine, 3600 * 1000 * MS)  # an hour of 1 ms samples after NTP sets the clock
    assert len(got.t) == MAX_EMIT
    assert engine.stats.skipped_grid == 3600 * 1000 - 250 + 1 - MAX_EMIT


def test_unused_signals_and_empty_batches() -> None:
    engine = Aligner("f", spec_of([HOLD_A]), start_ns=0)
    counts = engine.ingest(ReadingBatch.from_columns("a", ["x", "z"], [1, 2], [1, 1], [1, 2]), 0)
    assert counts.unused == 2 and counts.accepted == 0
    assert engine.ingest(ReadingBatch.from_columns("a", ["x"], [], [], []), 0).accepted == 0
    assert engine.emit(NEVER) is None


def test_early_emission_waits_for_what_linear_needs() -> None:
    linear = {"signal": "a/x", "fill": "linear", "max_age_ms": 500}
    spec = spec_of([linear, HOLD_B], on_missing="nan")
    engine = Aligner("f", spec, start_ns=0)
    feed(engine, [("a/x", R(50 * MS, 1.0)), ("b/y", R(0, 1.0)), ("b/y", R(400 * MS, 1.0))])
    got = run(engine, NEVER)
    assert got.t.tolist() == [0]  # 100 ms waits: a/x's next reading could still come
    feed(engine, [("a/x", R(250 * MS, 3.0, good=False))])
    assert run(engine, NEVER).t.tolist() == []  # a bad reading cannot close the bracket...
    feed(engine, [("a/x", R(600 * MS, 2.0, good=False))])
    late = run(engine, NEVER)  # ...but past 50 + 500 ms no reading can bracket with 50 ms
    assert (late.t // MS).tolist() == [100, 200, 300, 400]
    assert (late.state[:, 0] == FeatureState.MISSING).all()


@pytest.mark.parametrize("agg", ["mean", "min", "max", "rms", "last", "std"])
def test_an_empty_period_is_missing_but_count_is_zero(agg: str) -> None:
    spec = spec_of(
        [{"signal": "a/x", "agg": agg}, {"signal": "a/x", "agg": "count"}], on_missing="nan"
    )
    engine = Aligner("f", spec, start_ns=0)
    feed(engine, [("a/x", R(50 * MS, 1.0)), ("a/x", R(250 * MS, 3.0))])
    got = run(engine, NEVER)
    assert got.state[2].tolist() == [FeatureState.MISSING, FeatureState.OBSERVED]
    assert np.isnan(got.x[2, 0]) and got.x[2, 1] == 0 and np.isnan(got.age[2, 1])


def test_early_emission_boundaries_of_linear_and_nearest() -> None:
    """A usable reading at 0 then bad ones: how far each rule may be decided early."""
    for rule, bad_at, until in (
        ("linear", 499, 0),  # a usable reading at 500 could still bracket t_k with 0
        ("linear", 500, 500),  # now none can: every t_k in (0, 500] is missing
        ("nearest", 200, 100),  # up to the midpoint 0 is at least as near as anything after 200
        ("nearest", 900, 450),
        ("nearest", 2600, 1600),  # anything after 2600 is beyond max_age for t_k <= 1600
    ):
        spec = spec_of(
            [{"signal": "a/x", "fill": rule, "max_age_ms": 1000 if rule == "nearest" else 500}],
            period_ms=1,
            on_missing="nan",
        )
        engine = Aligner("f", spec, start_ns=0)
        feed(engine, [("a/x", R(0, 1.0)), ("a/x", R(bad_at * MS, 0.0, good=False))])
        run(engine, NEVER)
        assert engine.emitted_until_ns == until * MS, (rule, bad_at)


def test_the_worked_example_in_the_docs() -> None:
    """docs/aligner.md, "Worked example": the same readings give the same table."""
    spec = spec_of(
        [
            {"signal": "plc1/pressure", "fill": "linear", "max_age_ms": 250},
            {"signal": "opc1/temp", "fill": "hold", "max_age_ms": 300},
            {"signal": "vib/x", "agg": "mean"},
            {"signal": "vib/x", "agg": "count"},
        ],
        on_missing="nan",
    )
    engine = Aligner("pump", spec)
    vib = [
        (1010, 1),
        (1040, 3),
        (1090, 2),
        (1120, 5),
        (1180, np.nan),
        (1230, 4),
        (1290, 6),
        (1350, 2),
        (1420, 1),
    ]
    feed(
        engine,
        [
            ("plc1/pressure", R(t * MS, v))
            for t, v in [(960, 2.0), (1080, 2.6), (1190, 3.0), (1500, 4.0)]
        ],
        1000 * MS,
    )
    feed(
        engine,
        [
            ("opc1/temp", R(940 * MS, 20.0)),
            ("opc1/temp", R(1250 * MS, 99.0, False)),
            ("opc1/temp", R(1300 * MS, 21.0)),
        ],
        1000 * MS,
    )
    feed(engine, [("vib/x", R(t * MS, v)) for t, v in vib], 1000 * MS)
    got = run(engine, 1000 * MS)
    assert (got.t // MS).tolist() == [1000, 1100, 1200, 1300]
    np.testing.assert_allclose(
        got.x,
        [
            [2.2, 20, np.nan, 0],
            [2.6 + 0.4 * 20 / 110, 20, 2, 3],
            [np.nan, 20, 5, 1],
            [np.nan, 21, 5, 2],
        ],
        rtol=1e-6,
    )
    assert got.state.tolist() == [[2, 1, 3, 0], [2, 1, 0, 0], [3, 1, 0, 0], [3, 0, 0, 0]]
    np.testing.assert_array_equal(
        got.age,
        [[120, 60, np.nan, np.nan], [110, 160, 10, 10], [np.nan, 260, 80, 80], [np.nan, 0, 10, 10]],
    )
    assert engine.next_deadline_ns() == 1650 * MS
    assert not engine.due(1649 * MS) and engine.due(1650 * MS)
