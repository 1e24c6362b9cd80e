"""The flow file model: what it accepts, and the errors a user sees for what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet.flow import FlowSpec, load_flow, parse_flow
from shared.errors import ConfigError

ALIGN: dict[str, Any] = {
    "period_ms": 100,
    "max_delay_ms": 250,
    "features": [
        {"signal": "plc1/pressure", "fill": "linear", "max_age_ms": 500},
        {"signal": "opc1/ns=2;s=Pump/Temp", "fill": "hold", "max_age_ms": 5000},
        {"signal": "vib/x", "agg": "rms"},
        {"signal": "vib/x", "agg": "max", "name": "vib_peak"},
    ],
}


def flow(**align: Any) -> dict[str, Any]:
    return {"name": "pump-anomaly", "align": {**ALIGN, **align}}


def test_a_valid_flow() -> None:
    spec = parse_flow(flow()).align
    assert spec.sources == ["plc1", "opc1", "vib"]
    assert spec.labels == ["plc1/pressure", "opc1/ns=2;s=Pump/Temp", "vib/x:rms", "vib_peak"]
    assert spec.period_ns == 100_000_000 and spec.window == 1 and spec.on_missing == "skip"
    assert spec.features[1].source == "opc1"  # the signal name itself may contain '/'


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"perod_ms": 5}, "align.perod_ms: unknown key"),
        ({"period_ms": 0}, "align.period_ms: Input should be greater than 0"),
        ({"features": [{"signal": "a/x", "fill": "hold"}]}, "needs max_age_ms"),
        ({"features": [{"signal": "a/x", "agg": "mean", "max_age_ms": 5}]}, "applies to fill"),
        ({"features": [{"signal": "a/x", "agg": "mean", "fill": "hold"}]}, "exactly one"),
        ({"features": [{"signal": "a/x"}]}, "exactly one of 'fill' or 'agg'"),
        ({"features": [{"signal": "ax", "agg": "mean"}]}, "must be 'source/signal'"),
        ({"features": [{"signal": "a+/x", "agg": "mean"}]}, "may not contain"),
        ({"features": [{"signal": "a/x", "agg": "median"}]}, "features.0.agg"),
        ({"features": [{"signal": "a/x", "agg": "mean"}] * 2}, "repeated: ['a/x:mean']"),
        ({"features": []}, "at least 1 item"),
        ({"on_missing": "default"}, "needs 'default'"),
        ({"on_missing": "default", "default": [1, 2]}, "default has 2 values but there are 4"),
        ({"window": 0}, "align.window"),
    ],
)
def test_refused_with_the_key_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_flow(flow(**change), "pump.yaml")
    assert message in str(err.value) and str(err.value).startswith("pump.yaml")


def test_other_sections_are_typed_and_unknown_top_keys_are_refused() -> None:
    spec = parse_flow(
        {**flow(), "model": {"ref": "pump-ae@3"}, "sinks": [{"kind": "sqlite", "path": "h.db"}]}
    )
    assert isinstance(spec, FlowSpec) and spec.model is not None and spec.model.ref == "pump-ae@3"
    assert spec.sinks[0].name == "sqlite"
    with pytest.raises(ConfigError, match=r"sinks\.0\.sqlite\.path"):
        parse_flow({**flow(), "sinks": [{"kind": "sqlite"}]})
    with pytest.raises(ConfigError, match="modle: unknown key"):
        parse_flow({**flow(), "modle": {}})
    with pytest.raises(ConfigError, match="flow name"):
        parse_flow({**flow(), "name": "a/b"})


def test_load_flow_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(
        "name: f\nalign:\n  period_ms: 100\n  max_delay_ms: -1\n"
        "  features: [{signal: a/x, agg: mean}]\n"
    )
    with pytest.raises(ConfigError, match=r"flow.yaml:4: align.max_delay_ms"):
        load_flow(path)
