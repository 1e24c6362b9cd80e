"""Min/max per pixel column against a plain per-column loop; the live store's series."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.console.decimate import column_ns, minmax_columns
from edgefleet.console.live import BrokerFeed, LiveStore
from shared.codec import encode
from shared.mqtt import BrokerSettings


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.floats(-1e6, 1e6, allow_nan=False)), max_size=300
    ),
    st.integers(1, 700),
    st.integers(-5, 20),
    st.integers(1, 30),
)
def test_columns_hold_the_min_and_max_of_their_points(
    points: list[tuple[int, float]], col: int, first: int, count: int
) -> None:
    t = np.array([p[0] for p in points], dtype=np.int64)
    v = np.array([p[1] for p in points], dtype=np.float64)
    lo, hi = minmax_columns(t, v, col, first, count)
    for i in range(count):
        inside = [p[1] for p in points if p[0] // col == first + i]
        if inside:
            assert lo[i] == min(inside) and hi[i] == max(inside)
        else:
            assert np.isnan(lo[i]) and np.isnan(hi[i])


def test_a_spike_survives_a_million_points_in_800_columns() -> None:
    t = np.arange(1_000_000, dtype=np.int64) * 1_000_000  # 1 kHz for 1000 s
    v = np.zeros(len(t))
    v[123_457] = 9.0
    col = column_ns(int(t[-1] + 1), 800)
    lo, hi = minmax_columns(t, v, col, 0, 800)
    assert np.nanmax(hi) == 9.0 and np.nanmin(lo) == 0.0
    assert int(np.nanargmax(hi)) == 123_457 * 1_000_000 // col


def test_the_store_keeps_minutes_and_reads_batches_of_readings() -> None:
    store = LiveStore(keep_s=10.0, units={"plc1/p": "bar"})
    for k in range(30):  # 30 s of 1 kHz in batches of 1 s
        t = (np.arange(1000, dtype=np.int64) + k * 1000) * 1_000_000
        body = {
            "v": 1,
            "kind": "readings",
            "source": "plc1",
            "signals": ["p", "q"],
            "t": t,
            "sig": (np.arange(1000) % 2).astype(np.uint16),
            "value": np.full(1000, float(k)),
            "q": np.zeros(1000, np.uint8),
        }
        store.ingest("ef/s1/raw/plc1", *encode(body), retain=False)
    (series,) = [s for s in store.series_list() if s["id"] == "ef/s1/raw/plc1#p"]
    assert series["unit"] == "bar" and series["label"] == "s1 plc1/p"
    assert 5000 <= series["points"] <= 6000  # ~10 s of one of the two signals, whole batches
    cols = store.columns(["ef/s1/raw/plc1#p"], 1_000_000_000, 29, 1)
    assert cols["ef/s1/raw/plc1#p"]["max"] == [29.0]


def test_a_bad_payload_is_counted_not_raised() -> None:
    store = LiveStore()
    store.ingest("ef/s1/results/pump", b"\xc1", "application/msgpack", retain=False)
    store.ingest("ef/s1/results/pump", *encode({"t": [1], "no_outputs": 1}), retain=False)
    assert store.rejected == 2
    (topic,) = store.topic_tree()
    assert topic["errors"] == 2 and topic["count"] == 2
    assert store.last_messages("ef/s1/results/pump")[-1]["error"]  # shown, with the reason


async def test_a_broker_feed_says_what_it_cannot_show() -> None:
    feed = BrokerFeed(BrokerSettings(), ["ef/+/results/#"], "cloud", beyond="Ask the site.")
    said = await feed.watch("s1", ["ef/s1/results/#"], "ana")
    assert "already on this broker" in said
    said = await feed.watch("s1", ["ef/s1/results/pump", "ef/s1/raw/plc1"], "ana")
    assert said == "ef/s1/raw/plc1: not on this broker. Ask the site."
