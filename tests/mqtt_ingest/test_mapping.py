from __future__ import annotations

import numpy as np
import pytest

from services.mqtt_ingest.config import Input
from services.mqtt_ingest.mapping import Extractor, to_ns
from services.mqtt_ingest.per_topic import TopicNamer, ValueReader, to_value
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


def gateway(**spec: object) -> Input:
    return Input.model_validate({"topic": "site1/+/+/+", "source": "gw", **spec})


def test_signal_names_from_topic_levels_and_a_mapping_table() -> None:
    namer = TopicNamer(gateway(signal="{2}_{3}", signal_map={"site1/a/b/c": "special"}))
    assert namer.name("site1/line2/pump3/temperature") == "pump3_temperature"
    assert namer.name("site1/a/b/c") == "special"
    with pytest.raises(PayloadError, match="no entry of signal_map"):
        TopicNamer(gateway(signal_map={"site1/a/b/c": "x"})).name("site1/a/b/d")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"signal": "{4}"}, r"has 3 `\+` level"),
        ({"signal": "fixed"}, "names no topic level"),
        ({}, "either `signals` or `signal`"),
        ({"signal": "{1}", "signals": [{"name": "a", "path": "a"}]}, "either `signals`"),
    ],
)
def test_bad_gateway_inputs_are_refused(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gateway(**spec)


@pytest.mark.parametrize(
    ("raw", "value"), [(23.4, 23.4), (7, 7.0), ("1.5", 1.5), (True, 1.0), (False, 0.0)]
)
def test_bare_values(raw: object, value: float) -> None:
    assert to_value(raw) == value


@pytest.mark.parametrize("raw", ["warm", [1], {"a": 1}])
def test_values_that_are_not_numbers(raw: object) -> None:
    with pytest.raises(PayloadError, match="is not a number"):
        to_value(raw)


def test_a_bare_value_takes_the_arrival_time_an_object_its_own() -> None:
    reader = ValueReader(gateway(signal="{1}", timestamp={"path": "ts"}))
    assert reader.read(21.5, arrival_ns=9) == (9, 21.5, Quality.GOOD)
    assert reader.read({"value": 1, "ts": 2}, arrival_ns=9) == (2_000_000, 1.0, Quality.GOOD)
    _, _, q = reader.read(None, arrival_ns=9)
    assert q == Quality.BAD
