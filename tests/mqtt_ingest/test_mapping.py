from __future__ import annotations

import numpy as np
import pytest

from services.mqtt_ingest.config import Input
from services.mqtt_ingest.mapping import Extractor, to_ns
from shared.errors import PayloadError
from shared.messages import Quality

T0_MS = 1_700_000_000_123


def extractor(**spec: object) -> Extractor:
    base: dict[str, object] = {
        "topic": "x/#",
        "source": "gw",
        "timestamp": {"path": "ts"},
        "signals": [{"name": "temp", "path": "data.temp"}],
    }
    base.update(spec)
    return Extractor(Input.model_validate(base))


def test_scalar_fields_with_a_device_timestamp() -> None:
    batch, problems = extractor().extract({"ts": T0_MS, "data": {"temp": 21.5}}, arrival_ns=5)
    assert problems == []
    assert batch.t.tolist() == [T0_MS * 1_000_000]
    assert batch.value.tolist() == [21.5] and batch.q.tolist() == [Quality.GOOD]
    assert batch.received_ns == 5


def test_arrival_time_when_no_timestamp_is_configured() -> None:
    ex = extractor(timestamp={})
    batch, _ = ex.extract({"data": {"temp": 1}}, arrival_ns=123)
    assert batch.t.tolist() == [123]


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (1.5, "s", 1_500_000_000),
        (1500, "ms", 1_500_000_000),
        (1500000, "us", 1_500_000_000),
        (7, "ns", 7),
        ("2024-01-01T00:00:00.25Z", "iso", 1_704_067_200_250_000_000),
    ],
)
def test_timestamp_units(value: object, unit: str, expected: int) -> None:
    assert to_ns(value, unit) == expected


def test_a_waveform_batch_gets_one_time_per_value() -> None:
    ex = extractor(signals=[{"name": "x", "path": "x", "period_path": "dt_us"}])
    batch, _ = ex.extract({"ts": T0_MS, "dt_us": 1000, "x": [0.1, 0.2, 0.3]}, 0)
    t0 = T0_MS * 1_000_000
    assert batch.t.tolist() == [t0, t0 + 1_000_000, t0 + 2_000_000]
    np.testing.assert_allclose(batch.value, [0.1, 0.2, 0.3])


def test_null_and_nan_values_are_bad_quality_not_dropped() -> None:
    ex = extractor(signals=[{"name": "x", "path": "x", "period_us": 10}])
    batch, _ = ex.extract({"ts": T0_MS, "x": [1.0, None, 3.0]}, 0)
    assert batch.q.tolist() == [Quality.GOOD, Quality.BAD, Quality.GOOD]
    assert np.isnan(batch.value[1])


def test_quality_fields() -> None:
    ex = extractor(quality_path="q")
    batch, _ = ex.extract({"ts": T0_MS, "q": "uncertain", "data": {"temp": 1}}, 0)
    assert batch.q.tolist() == [Quality.UNCERTAIN]
    with pytest.raises(PayloadError, match="quality"):
        ex.extract({"ts": T0_MS, "q": "so-so", "data": {"temp": 1}}, 0)


def test_one_bad_field_does_not_lose_the_good_ones() -> None:
    ex = extractor(
        signals=[{"name": "a", "path": "a"}, {"name": "b", "path": "b"}, {"name": "c", "path": "c"}]
    )
    batch, problems = ex.extract({"ts": T0_MS, "a": 1, "b": "twelve"}, 0)
    assert batch.value.tolist() == [1.0]
    assert problems == [
        "signal 'b': value 'twelve' is not a number",
        "signal 'c': field 'c': no field c",
    ]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "expected a JSON object"),
        ({"data": {"temp": 1}}, "timestamp 'ts': no field ts"),
        ({"ts": "yesterday", "data": {"temp": 1}}, "must be a number of ms"),
        ({"ts": T0_MS, "data": {"temp": {"deep": 1}}}, "not a number"),
    ],
)
def test_message_level_problems_raise(payload: object, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        extractor().extract(payload, 0)
