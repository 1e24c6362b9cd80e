"""`edgefleet check`: every error names its file, line and key; `schema` matches the files."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.cli import main
from edgefleet.site.commands import schemas

ROOT = Path(__file__).resolve().parents[2]

SITE = """\
site: s1
broker: {port: 1883}
sources:
  - name: plc1
    kind: modbus
    device: {host: 127.0.0.1, port: 5020}
    blocks:
      - table: input
        points:
          - {name: p, address: 0}
flows: [flows/pump.yaml]
"""
FLOW = """\
name: pump
align:
  period_ms: 100
  max_delay_ms: 200
  features:
    - {signal: plc1/p, fill: hold, max_age_ms: 500}
model: {path: pump.onnx}
"""


def write(tmp_path: Path, site: str = SITE, flow: str = FLOW) -> Path:
    (tmp_path / "flows").mkdir(exist_ok=True)
    (tmp_path / "flows" / "pump.yaml").write_text(flow)
    (tmp_path / "site.yaml").write_text(site)
    return tmp_path / "site.yaml"


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_valid_site_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(write(tmp_path), capsys)
    assert code == 0, out
    assert "valid" in out


def test_error_in_site_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SITE.replace("broker: {port: 1883}", "brokr: {port: 1883}"))
    code, out = check(path, capsys)
    assert code == 2
    assert f"{path}:2: brokr: unknown key" in out


def test_error_in_an_adapters_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = SITE.replace("{name: p, address: 0}", "{name: p, address: 30001}")
    site = site.replace("device: {host", "devise: {host")
    code, out = check(write(tmp_path, site), capsys)
    assert code == 2
    path = tmp_path / "site.yaml"
    assert f"{path}:6: sources.0.devise: unknown key (modbus-plc1)" in out
    assert f"{path}:8: sources.0.blocks.0: " in out and "looks like a Modicon number" in out


def test_error_in_a_flow_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flow = FLOW.replace("max_age_ms: 500}", "max_age_ms: 500, agg: mean}")
    flow = flow.replace("model: {path: pump.onnx}", "model: {path: pump.onnx, max_bach: 8}")
    code, out = check(write(tmp_path, flow=flow), capsys)
    assert code == 2
    shown = tmp_path / "flows" / "pump.yaml"
    assert f"{shown}:6: align.features.0: " in out and "exactly one of 'fill' or 'agg'" in out
    assert f"{shown}:7: model.max_bach: unknown key" in out


def test_missing_flow_file_and_bad_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = check(write(tmp_path, SITE.replace("flows/pump.yaml", "flows/nope.yaml")), capsys)
    assert code == 2 and f"{tmp_path / 'site.yaml'}:11: flows.0: no such flow file" in out
    flow = (
        FLOW
        + "actions:\n  - {when: 'score >', "
        + "write: {source: plc1, table: coil, address: 0, value: true}}\n"
    )
    code, out = check(write(tmp_path, flow=flow), capsys)
    assert code == 2 and f"{tmp_path / 'flows' / 'pump.yaml'}:9: actions.0.when: " in out


def test_an_error_found_only_in_the_derived_config(tmp_path: Path) -> None:
    # model.path and model.ref both set: InferenceSettings refuses it, pointing at the flow.
    from edgefleet.site.load import check_site

    flow = FLOW.replace("model: {path: pump.onnx}", "model: {path: pump.onnx, ref: a@1}")
    errors = check_site(write(tmp_path, flow=flow))
    assert any(":7: model:" in e and "exactly one of 'path' or 'ref'" in e for e in errors), errors


def test_committed_schemas_are_the_generated_ones() -> None:
    for name, text in schemas().items():
        committed = (ROOT / "docs" / "schema" / name).read_text()
        assert committed == text, f"docs/schema/{name} is stale: run `edgefleet schema`"


def test_schema_lists_each_source_kinds_keys() -> None:
    import json

    site = json.loads(schemas()["site.schema.json"])
    kinds = site["properties"]["sources"]["items"]["oneOf"]
    modbus = site["$defs"]["ModbusSource"]
    assert {"$ref": "#/$defs/ModbusSource"} in kinds
    assert {"name", "kind", "device", "blocks", "poll_ms"} <= set(modbus["properties"])
    assert "site" not in modbus["properties"] and "source" not in modbus["properties"]


def test_the_published_schemas_accept_what_the_loader_accepts() -> None:
    """A sink without a name and a `host:port` broker load, so the schemas (what a YAML
    language server checks against) must accept them too; a wrong key stays refused."""
    import json

    import jsonschema

    from edgefleet.flow import parse_flow
    from edgefleet.site.model import SiteSpec

    flow = {
        "name": "pump",
        "align": {
            "period_ms": 100,
            "max_delay_ms": 200,
            "encoding": "json",
            "features": [{"signal": "plc1/p", "fill": "hold", "max_age_ms": 500}],
        },
        "sinks": [{"kind": "sqlite", "path": "history.db"}],
    }
    site = {"site": "s1", "broker": "10.0.0.5:1884", "flows": ["flows/pump.yaml"]}
    assert parse_flow(flow).sinks[0].name == "sqlite"
    assert SiteSpec.model_validate(site).broker.port == 1884
    published = {n: json.loads(t) for n, t in schemas().items()}
    jsonschema.validate(flow, published["flow.schema.json"])
    jsonschema.validate(site, published["site.schema.json"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**site, "broker": "10.0.0.5:port"}, published["site.schema.json"])
    with pytest.raises(jsonschema.ValidationError):
        bad = {**flow, "sinks": [{"kind": "sqlite", "path": "h.db", "nmae": "x"}]}
        jsonschema.validate(bad, published["flow.schema.json"])
