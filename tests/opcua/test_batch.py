"""Data changes → reading batches, without a server."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, cast

from asyncua import ua

from services.opcua.batch import Gatherer, quality, to_ns
from shared.messages import Quality


def item(
    handle: int,
    value: object,
    status: int = 0,
    src: datetime | None = None,
    srv: datetime | None = None,
) -> ua.MonitoredItemNotification:
    dv = ua.DataValue(
        ua.Variant(value),
        StatusCode=ua.StatusCode(ua.UInt32(status)),
        # asyncua annotates its own DateTime alias; a datetime is what it takes
        SourceTimestamp=cast(Any, src),
        ServerTimestamp=cast(Any, srv),
    )
    return ua.MonitoredItemNotification(ClientHandle=handle, Value=dv)


T1 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
T2 = datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)


def test_timestamps_source_then_server_then_arrival() -> None:
    g = Gatherer("opc1", ["a", "b", "c"])
    batch = g.gather([item(0, 1.5, src=T1, srv=T2), item(1, 2.5, srv=T2), item(2, 3.5)], 42)
    assert batch is not None
    assert batch.t.tolist() == [to_ns(T1), to_ns(T2), 42]
    assert to_ns(T1) == 1714564800_123456000
    assert batch.sig.tolist() == [0, 1, 2] and batch.value.tolist() == [1.5, 2.5, 3.5]
    assert batch.received_ns == 42


def test_status_severity_maps_to_quality_and_bad_has_no_value() -> None:
    assert quality(ua.StatusCode(ua.UInt32(0))) is Quality.GOOD
    assert quality(ua.StatusCode(ua.UInt32(0x40000000))) is Quality.UNCERTAIN
    assert quality(ua.StatusCode(ua.UInt32(0x80340000))) is Quality.BAD
    g = Gatherer("opc1", ["a", "b", "c"])
    batch = g.gather(
        [item(0, 1.0, 0x40000000, T1), item(1, 7.0, 0x80340000, T1), item(2, True, 0, T1)], 0
    )
    assert batch is not None
    assert batch.q.tolist() == [Quality.UNCERTAIN, Quality.BAD, Quality.GOOD]
    assert batch.value[0] == 1.0 and math.isnan(batch.value[1]) and batch.value[2] == 1.0


def test_repeated_value_after_resubscription_is_dropped_and_texts_kept_aside() -> None:
    g = Gatherer("opc1", ["a", "s"])
    assert g.gather([item(0, 1.0, src=T1), item(1, "hello", src=T1)], 0) is not None
    assert g.texts == {"s": "hello"}
    bad = g.bad([0], 99)
    assert bad is not None and math.isnan(bad.value[0]) and bad.q.tolist() == [Quality.BAD]
    assert g.gather([item(0, 1.0, src=T1)], 1) is None  # the same reading again
    assert g.duplicates == 1
    again = g.gather([item(0, 1.0, src=T2)], 2)
    assert again is not None and again.t.tolist() == [to_ns(T2)]
