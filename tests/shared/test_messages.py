from __future__ import annotations

import numpy as np
import pytest

from shared.errors import PayloadError
from shared.messages import (
    CONTROL_PLANE,
    ReadingBatch,
    SampleBatch,
    Status,
    WriteRequest,
)


def wire(**override: object) -> dict[str, object]:
    d: dict[str, object] = {
        "v": 1,
        "kind": "readings",
        "source": "s",
        "signals": ["a"],
        "t": [1, 2],
        "sig": [0, 0],
        "value": [1.0, 2.0],
        "q": [0, 0],
    }
    d.update(override)
    return d


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"v": 2}, "version"),
        ({"kind": "samples"}, "expected kind"),
        ({"t": [1]}, "shape"),
        ({"sig": [0, 1]}, "signal index 1"),
        ({"value": ["x", "y"]}, "not an array of float64"),
        ({"q": [0, 7]}, "quality"),
        ({"signals": "a"}, "list of strings"),
        ({"source": ""}, "non-empty"),
        ({"t": [[1, 2]]}, "dimension"),
    ],
)
def test_malformed_readings_say_what_is_wrong(override: dict[str, object], message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        ReadingBatch.from_wire(wire(**override))


def test_json_null_values_become_nan() -> None:
    batch = ReadingBatch.from_wire(wire(value=[None, 2.0]))
    assert np.isnan(batch.value[0]) and batch.value[1] == 2.0


def test_sample_shapes_are_checked() -> None:
    with pytest.raises(PayloadError, match="expected"):
        SampleBatch.from_wire(
            {
                "v": 1,
                "kind": "samples",
                "flow": "f",
                "features": ["a", "b"],
                "t": [1],
                "x": [[1.0]],
                "state": [[0]],
                "age_ms": [[0.0]],
            }
        )


def test_control_plane_messages_refuse_unknown_keys_and_versions() -> None:
    status = Status(instance="i", service="s", state="online")
    assert Status.from_wire(status.to_wire()) == status
    with pytest.raises(PayloadError, match="color"):
        Status.from_wire({**status.to_wire(), "color": "red"})
    with pytest.raises(PayloadError, match="v"):
        WriteRequest.from_wire(
            {"v": 2, "kind": "write", "request_id": "r", "target": {}, "value": 1}
        )
    assert set(CONTROL_PLANE) >= {"status", "error", "config", "write", "event", "desired"}
