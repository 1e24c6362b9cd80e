from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared import codec
from shared.errors import PayloadError
from shared.messages import ModelRef, ReadingBatch, ResultBatch, SampleBatch

dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.uint16, np.int32])


@given(hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))
def test_msgpack_round_trips_any_numeric_array(arr: np.ndarray) -> None:
    payload, content_type = codec.encode({"a": arr})
    back = codec.decode(payload, content_type)["a"]
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_big_endian_arrays_arrive_little_endian() -> None:
    arr = np.arange(4, dtype=">i4")
    back = codec.decode(*codec.encode(arr))
    assert back.dtype == np.dtype("<i4")
    assert back.tolist() == [0, 1, 2, 3]


def test_json_writes_nan_as_null_and_arrays_as_lists() -> None:
    payload, content_type = codec.encode(
        {"x": np.array([1.5, np.nan, np.inf]), "y": float("nan")}, "json"
    )
    assert content_type == codec.JSON
    assert json.loads(payload) == {"x": [1.5, None, None], "y": None}


def test_decode_recognizes_json_without_content_type() -> None:
    assert codec.decode(b' {"a": 1}') == {"a": 1}
    assert codec.decode(codec.encode({"a": 1})[0]) == {"a": 1}


@pytest.mark.parametrize(
    ("payload", "content_type", "message"),
    [
        (b"\xc1", codec.MSGPACK, "not valid msgpack"),
        (b"{nope", codec.JSON, "not valid JSON"),
        (b"x", "text/plain", "unsupported content type"),
        (b"\xc7\x03\x05abc", codec.MSGPACK, "unknown msgpack extension"),
        (b"\xc7\x03\x01abc", codec.MSGPACK, "malformed array"),
    ],
)
def test_bad_payloads_raise_payload_error(payload: bytes, content_type: str, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        codec.decode(payload, content_type)


def test_string_arrays_travel_as_lists_and_others_are_refused() -> None:
    assert codec.decode(*codec.encode(np.array(["a", "b"]))) == ["a", "b"]
    with pytest.raises(PayloadError, match="dtype"):
        codec.encode(np.array([1 + 2j]))


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_reading_batch_round_trip(encoding: str, n: int) -> None:
    rng = np.random.default_rng(n)
    value = rng.normal(size=n)
    if n:
        value[0] = np.nan
    batch = ReadingBatch.from_columns(
        "plc1",
        ["a", "b"],
        np.arange(n) * 10**8 + 1_700_000_000_000_000_000,
        np.arange(n) % 2,
        value,
        np.arange(n) % 3,
    )
    enc = codec.Encoding(encoding)
    payload, content_type = codec.encode(batch.to_wire(enc), enc)
    back = ReadingBatch.from_wire(codec.decode(payload, content_type))
    assert back.source == "plc1" and back.signals == ["a", "b"] and len(back) == n
    np.testing.assert_array_equal(back.t, batch.t)
    np.testing.assert_array_equal(back.sig, batch.sig)
    np.testing.assert_array_equal(back.q, batch.q)
    np.testing.assert_array_equal(back.value, batch.value)  # NaN equal to NaN here


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_sample_and_result_batches_round_trip(encoding: str) -> None:
    enc = codec.Encoding(encoding)
    x = np.array([[1.0, np.nan], [3.0, 4.0]], np.float32)
    samples = SampleBatch(
        "pump",
        ["p", "t"],
        np.array([100, 200]),
        x,
        np.array([[0, 3], [1, 2]], np.uint8),
        np.zeros_like(x),
    )
    back = SampleBatch.from_wire(codec.decode(*codec.encode(samples.to_wire(enc), enc)))
    np.testing.assert_array_equal(back.x, x)
    assert back.state.tolist() == [[0, 3], [1, 2]]

    results = ResultBatch(
        "pump",
        ModelRef("ae", "3", "ab" * 32),
        np.array([100, 200]),
        {"score": np.array([0.1, np.nan])},
        np.array([5.0, 6.0], np.float32),
    )
    back_r = ResultBatch.from_wire(codec.decode(*codec.encode(results.to_wire(enc), enc)))
    assert back_r.ids == ["pump:100", "pump:200"]
    assert back_r.outputs["score"][0] == pytest.approx(0.1)
    assert np.isnan(back_r.outputs["score"][1])
    if enc is codec.Encoding.JSON:
        assert results.to_wire(enc)["time"][0].startswith("1970-01-01T00:00:00")
