"""The rule state machine, pure: debounce, hysteresis, cooldown, rate limit, hold."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.actuator.rule import Rule


def run(rule: Rule, samples: list[tuple[bool, bool]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for i, (when, reset) in enumerate(samples):
        kind = rule.observe(when, reset)
        if kind is not None:
            out.append((i, kind))
            rule.done(kind)
    return out


@given(st.integers(1, 6), st.lists(st.booleans(), max_size=80))
def test_debounce_never_fires_before_n_consecutive_true_samples(n: int, whens: list[bool]) -> None:
    rule = Rule(n, None)
    for i, kind in run(rule, [(w, False) for w in whens]):
        assert kind == "set"
        assert all(whens[i - n + 1 : i + 1]) and i >= n - 1
    first = next(
        (i for i in range(len(whens)) if all(whens[max(0, i - n + 1) : i + 1]) and i >= n - 1), None
    )
    assert [i for i, _ in run(Rule(n, None), [(w, False) for w in whens])] == (
        [first] if first is not None else []
    )


@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.lists(st.tuples(st.booleans(), st.booleans()), max_size=80),
)
def test_set_and_reset_alternate_each_after_its_own_streak(
    n: int, m: int, samples: list[tuple[bool, bool]]
) -> None:
    transitions = run(Rule(n, m), samples)
    kinds = [k for _, k in transitions]
    assert kinds == ["set", "reset"] * (len(kinds) // 2) + (["set"] if len(kinds) % 2 else [])
    last = -1
    for i, kind in transitions:
        need, col = (n, 0) if kind == "set" else (m, 1)
        assert i - last >= need  # the streak started after the previous transition
        assert all(s[col] for s in samples[i - need + 1 : i + 1])
        last = i


def test_hysteresis_between_thresholds_keeps_the_state() -> None:
    rule = Rule(2, 2)
    score = [0.9, 0.9, 0.7, 0.7, 0.7, 0.9, 0.5, 0.7, 0.5, 0.5]
    got = run(rule, [(s > 0.8, s < 0.6) for s in score])
    assert got == [(1, "set"), (9, "reset")]


def test_a_suppressed_transition_stays_due_and_fires_after_cooldown() -> None:
    rule = Rule(2, None, cooldown_s=5.0)
    rule.attempted(100.0)
    assert rule.observe(True, False) is None
    assert rule.observe(True, False) == "set"
    assert "cooldown" in (rule.gate(102.0) or "")
    assert rule.observe(True, False) == "set"  # still due on the next true sample
    assert rule.gate(105.0) is None


def test_rate_limit_counts_writes_in_a_sliding_minute() -> None:
    rule = Rule(1, 1, max_per_minute=3)
    for t in (0.0, 10.0, 20.0):
        assert rule.gate(t) is None
        rule.attempted(t)
    assert "rate limit: 3 writes" in (rule.gate(30.0) or "")
    assert rule.gate(60.0) is None  # the write at 0 s left the window


def test_a_held_rule_neither_counts_nor_decides_until_released() -> None:
    rule = Rule(2, None)
    rule.observe(True, False)
    rule.hold()
    assert [rule.observe(True, False) for _ in range(5)] == [None] * 5
    rule.release()
    assert rule.observe(True, False) is None  # the streak starts again after release
    assert rule.observe(True, False) == "set"
