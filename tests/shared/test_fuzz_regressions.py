"""Inputs the fault suite's fuzzer once crashed on (faults/test_fuzz.py), kept as regressions:
each must be refused with the project's own clear error."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import numpy as np
import pytest

from edgefleet.flow import parse_flow
from shared import codec
from shared.errors import ConfigError, PayloadError
from shared.messages import ReadingBatch, ResultBatch, SampleBatch

GOOD: dict[str, Any] = {
    "v": 1,
    "kind": "readings",
    "source": "plc1",
    "signals": ["p"],
    "t": [1],
    "sig": [0],
    "value": [1.0],
    "q": [0],
}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"t": [2**70]}, "not an array of int64"),  # OverflowError before
        ({"t": [1.5e18]}, "not integers"),  # a float cast to int64 silently
        ({"sig": [1e308]}, "not integers"),
        ({"v": np.array([1, 1])}, "schema version"),  # an array compared with != before
        ({"kind": {"a": 1}}, "expected kind"),  # unhashable before
        ({"kind": np.array(["readings", "x"])}, "expected kind"),
    ],
)
def test_malformed_columns_and_headers(change: dict[str, Any], error: str) -> None:
    with pytest.raises(PayloadError, match=error):
        ReadingBatch.from_wire({**GOOD, **change})


@pytest.mark.parametrize("dtype", [",i8", "a", "S3", "O", "<U4", "V8", "(2,)i4", "i8,i8"])
def test_array_extension_with_a_dtype_numpy_would_parse(dtype: str) -> None:
    header = msgpack.packb([dtype, [1]])
    ext = msgpack.ExtType(1, struct.pack("<H", len(header)) + header + b"\x00" * 8)
    payload = msgpack.packb({"x": ext})
    with pytest.raises(PayloadError, match="not numeric"):
        codec.decode(payload, codec.MSGPACK)  # SyntaxError from numpy's parser before


def test_samples_with_an_array_version() -> None:
    with pytest.raises(PayloadError):
        SampleBatch.from_wire({"v": np.array([1, 2]), "kind": "samples"})


@pytest.mark.parametrize("key", ["period_ms", "max_delay_ms"])
def test_flow_with_an_absurd_period_is_refused(key: str) -> None:
    align = {
        "period_ms": 100,
        "max_delay_ms": 250,
        "features": [{"signal": "plc1/p", "fill": "hold", "max_age_ms": 500}],
        key: 1e308,  # OverflowError when converted to ns before
    }
    with pytest.raises(ConfigError, match=key):
        parse_flow({"name": "pump", "align": align})


def test_results_with_a_ragged_output_column() -> None:
    wire = {
        "v": 1,
        "kind": "results",
        "flow": "pump",
        "model": {"name": "m", "version": "1", "sha256": "ab" * 32},
        "t": [1, 2],
        "outputs": {"score": [[1.0], [1.0, 2.0]]},  # ValueError from numpy before
        "latency_us": [1.0, 1.0],
        "id": ["pump:1", "pump:2"],
    }
    with pytest.raises(PayloadError, match="not an array"):
        ResultBatch.from_wire(wire)
