"""The debug session's decimation and filter arithmetic: pure logic, no I/O."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.agent.debug import Throttle, minimal
from shared.errors import TopicError
from shared.mqtt import Received
from shared.topics import Topics, covers, matches


def message(topic: str, n: int) -> Received:
    return Received(topic, str(n).encode(), None, 0, False, 0)


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
    interval=st.floats(min_value=0.01, max_value=1.0),
)
def test_at_most_one_per_interval_and_the_last_of_a_burst_gets_through(
    gaps: list[float], interval: float
) -> None:
    throttle = Throttle(interval)
    now, sent, accounted = 0.0, [], 0

    def flush(until: float) -> None:
        nonlocal accounted
        while (due := throttle.next_due()) is not None and due <= until:
            for (m, _), dropped in throttle.due(due):
                sent.append((due, int(m.payload)))
                accounted += 1 + dropped

    for n, gap in enumerate(gaps):
        flush(now + gap)
        now += gap
        go = throttle.offer("t", (message("t", n), 0), now)
        if go is not None:
            sent.append((now, n))
            accounted += 1 + go[1]
    flush(float("inf"))
    times = [t for t, _ in sent]
    assert all(b - a >= interval - 1e-9 for a, b in itertools.pairwise(times))
    assert sent[-1][1] == len(gaps) - 1  # the latest always goes out in the end
    assert [n for _, n in sent] == sorted(n for _, n in sent)
    assert accounted == len(gaps)  # forwarded or counted as dropped, nothing else


def test_topics_are_throttled_apart() -> None:
    throttle = Throttle(1.0)
    assert throttle.offer("a", (message("a", 1), 0), 0.0) is not None
    assert throttle.offer("b", (message("b", 1), 0), 0.1) is not None
    assert throttle.offer("a", (message("a", 2), 0), 0.2) is None
    assert throttle.next_due() == 1.0


def test_minimal_keeps_only_filters_no_other_covers() -> None:
    filters = ["ef/s/raw/plc1", "ef/s/raw/+", "ef/s/results/#", "ef/s/results/pump", "ef/s/raw/+"]
    assert minimal(filters) == {"ef/s/raw/+", "ef/s/results/#"}
    assert covers("ef/s/raw/#", "ef/s/raw/+") and not covers("ef/s/raw/+", "ef/s/raw/#")
    assert not covers("ef/s/raw/plc1", "ef/s/raw/+")


@given(st.sampled_from(["plc1", "plc2", "+", "#"]), st.sampled_from(["plc1", "plc2", "+", "#"]))
def test_covers_agrees_with_matching(wide: str, narrow: str) -> None:
    a, b = f"ef/s/raw/{wide}", f"ef/s/raw/{narrow}"
    if covers(a, b):
        for topic in ("ef/s/raw/plc1", "ef/s/raw/plc2", "ef/s/raw/x"):
            assert not matches(topic, b) or matches(topic, a)


def test_debug_filters_are_made_absolute_or_refused_with_the_reason() -> None:
    t = Topics("plant1")
    assert t.debug_filter("results/#") == "ef/plant1/results/#"
    assert t.debug_filter("ef/plant1/samples/pump") == "ef/plant1/samples/pump"
    for bad, why in (
        ("debug/#", "kind level"),
        ("#", "kind level"),
        ("+/pump", "kind level"),
        ("desired", "kind level"),
        ("ef/plant2/results/#", "sees only"),
        ("results/pump/x", "expected"),
        ("results/pu+mp", "may not contain"),
    ):
        with pytest.raises(TopicError, match=why):
            t.debug_filter(bad)


def test_debug_data_topics_keep_the_original_topic() -> None:
    t = Topics("plant1")
    assert t.debug_data("s1", "ef/plant1/samples/pump") == "ef/plant1/debug/data/s1/samples/pump"
    with pytest.raises(TopicError):
        t.debug_data("s1", "ef/plant2/samples/pump")
