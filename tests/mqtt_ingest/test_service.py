"""mqtt-ingest on a real broker: both encodings, and bad input that never stops it."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np

from services.mqtt_ingest.config import IngestConfig
from services.mqtt_ingest.service import decode_value, main
from shared.codec import JSON, MSGPACK
from shared.config import validate
from shared.messages import ReadingBatch
from shared.topics import Topics
from tests.helpers import Probe, running


def ingest_config(base: dict[str, Any], site: str) -> IngestConfig:
    return validate(
        IngestConfig,
        {
            **base,
            "instance": "ingest1",
            "inputs": [
                {
                    "topic": f"{site}-ext/+/telemetry",
                    "source": "gw",
                    "timestamp": {"path": "ts"},
                    "signals": [{"name": "temp", "path": "temp"}, {"name": "rpm", "path": "rpm"}],
                },
                {
                    "topic": f"{site}-ext/vib",
                    "source": "vib",
                    "format": "msgpack",
                    "timestamp": {"path": "t0", "unit": "us"},
                    "signals": [{"name": "x", "path": "x", "period_us": 1000}],
                },
            ],
        },
        "test",
    )


async def test_json_and_msgpack_messages_become_reading_batches(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    async with running(main(ingest_config(base_config, site))):
        await probe.wait_for(topics.status("ingest1"), lambda s: s["state"] == "online")
        await probe.publish(
            f"{site}-ext/p1/telemetry", {"ts": 1000, "temp": 20.5, "rpm": 1450}, "json"
        )
        # a gateway that sends msgpack without a content type
        await probe.publish_raw(f"{site}-ext/vib", msgpack.packb({"t0": 5, "x": [1.0, 2.0, 3.0]}))
        [gw] = await probe.wait_for(topics.raw("gw"))
        [vib] = await probe.wait_for(topics.raw("vib"))
    batch = ReadingBatch.from_wire(gw)
    assert batch.signals == ["temp", "rpm"]
    assert batch.t.tolist() == [1_000_000_000, 1_000_000_000]
    assert batch.value.tolist() == [20.5, 1450.0]
    vib_batch = ReadingBatch.from_wire(vib)
    assert vib_batch.t.tolist() == [5000, 1_005_000, 2_005_000]
    np.testing.assert_array_equal(vib_batch.value, [1.0, 2.0, 3.0])


async def test_malformed_payloads_are_reported_counted_and_survived(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    bad = [b"{not json", b"[1, 2]", b'{"temp": 1}', b'{"ts": "noon", "temp": 1}']
    async with running(main(ingest_config(base_config, site))):
        await probe.wait_for(topics.status("ingest1"), lambda s: s["state"] == "online")
        for payload in bad:
            await probe.publish_raw(f"{site}-ext/p1/telemetry", payload, qos=1)
        await probe.publish(
            f"{site}-ext/p1/telemetry", {"ts": 2000, "temp": "hot", "rpm": 1}, "json", qos=1
        )
        await probe.publish(
            f"{site}-ext/p1/telemetry", {"ts": 3000, "temp": 22, "rpm": 2}, "json", qos=1
        )
        await probe.wait_for(
            topics.raw("gw"), lambda r: r["value"].tolist()[-2:] == [22.0, 2.0]
        )  # readings of several messages may share one batch (coalesce_ms)
        raws = probe.decoded(topics.raw("gw"))
        await probe.wait_for(
            topics.status("ingest1"), lambda s: s["health"]["rejected"] == len(bad) + 1
        )
    reasons = " | ".join(e["reason"] for e in probe.decoded(topics.errors("ingest1")))
    for expected in (
        "not valid JSON",
        "expected a JSON object",
        "no field ts",
        "must be a number of ms",
        "signal 'temp': value 'hot' is not a number",
    ):
        assert expected in reasons
    # the good field of the half-bad message still arrived, and so did the good message
    assert [v for r in raws for v in r["value"].tolist()] == [1.0, 22.0, 2.0]


def gateway_config(base: dict[str, Any], site: str, **ingest: Any) -> IngestConfig:
    return validate(
        IngestConfig,
        {
            **base,
            "instance": "ingest1",
            **ingest,
            "inputs": [
                {
                    "topic": f"{site}-gw/+/+/+",
                    "source": "plant",
                    "signal": "{2}_{3}",
                    "timestamp": {"path": "ts"},
                },
                {
                    "topic": f"{site}-tags/#",
                    "source": "tags",
                    "signal_map": {f"{site}-tags/a/b": "flow_in"},
                },
            ],
        },
        "test",
    )


async def test_one_value_per_topic_named_from_the_topic_and_coalesced(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    async with running(main(gateway_config(base_config, site, coalesce_ms=200))):
        await probe.wait_for(topics.status("ingest1"), lambda s: s["state"] == "online")
        sends = [
            ("line1/pump3/temperature", b"23.4"),
            ("line1/pump3/pressure", b'"1.5"'),
            ("line1/pump3/running", b"true"),
            ("line2/pump4/temperature", b'{"value": 19, "ts": 1733050000123}'),
        ]
        for topic, payload in sends:
            await probe.publish_raw(f"{site}-gw/{topic}", payload, qos=1)
        await probe.publish_raw(f"{site}-tags/a/b", b"7", qos=1)
        [batch] = await probe.wait_for(topics.raw("plant"))
        [tags] = await probe.wait_for(topics.raw("tags"))
    plant = ReadingBatch.from_wire(batch)
    assert len(probe.received(topics.raw("plant"))) == 1  # four messages, one batch
    named = dict(zip([plant.signals[i] for i in plant.sig], plant.value.tolist(), strict=True))
    assert named == {
        "pump3_temperature": 23.4,
        "pump3_pressure": 1.5,
        "pump3_running": 1.0,
        "pump4_temperature": 19.0,
    }
    assert 1733050000123 * 1_000_000 in plant.t.tolist()  # the object's own timestamp
    assert ReadingBatch.from_wire(tags).signals == ["flow_in"]


async def test_gateway_input_reports_what_it_cannot_read(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    bad = [
        (f"{site}-tags/not/mapped", b"1", "matches no entry of signal_map"),
        (f"{site}-gw/l/p/t", b"{oops", "not valid JSON"),
        (f"{site}-gw/l/p/t", b"01", "not valid JSON"),  # float() would read it: JSON does not
        (f"{site}-gw/l/p/t", b'"warm"', "value 'warm' is not a number"),
        (f"{site}-gw/l/p/t", b'{"value": [1]}', "is not a number"),
    ]
    async with running(main(gateway_config(base_config, site))):
        await probe.wait_for(topics.status("ingest1"), lambda s: s["state"] == "online")
        for topic, payload, _ in bad:
            await probe.publish_raw(topic, payload, qos=1)
        await probe.publish_raw(f"{site}-gw/l/p/t", b"2.5", qos=1)
        [good] = await probe.wait_for(topics.raw("plant"))
        await probe.wait_for(
            topics.status("ingest1"), lambda s: s["health"]["rejected"] == len(bad)
        )
    assert ReadingBatch.from_wire(good).value.tolist() == [2.5]
    errors = probe.decoded(topics.errors("ingest1"))
    for topic, _, reason in bad:
        assert any(e["topic"] == topic and reason in e["reason"] for e in errors), reason


def test_a_bare_number_reads_as_json_would_and_only_as_json() -> None:
    for payload in (b"23.4", b"-7", b"1e3", b"1733050000.123456", b"12345678901234567890"):
        assert decode_value(payload, None, None) == float(json.loads(payload))
        assert decode_value(payload, JSON, None) == float(json.loads(payload))
    assert decode_value(b"7", MSGPACK, None) == 0x37  # msgpack's fixint for the byte "7"
    assert decode_value(b"7", None, MSGPACK) == 0x37
    assert decode_value(b"true", None, None) is True  # not a number: the JSON parser's
