from pathlib import Path

from edgefleet.fleet.client import FleetClient
from tests.inference import models


async def test_push_list_show_pull(fleet: FleetClient, tmp_path: Path) -> None:
    path = models.isolation_forest(tmp_path / "m.onnx")
    result = await fleet.push(path, "pump-ae", "model", "first")
    assert result["created"] and result["resource"]["ref"] == "pump-ae@1"
    listed = await fleet.call("library.list")
    assert [r["name"] for r in listed["resources"]] == ["pump-ae"]
    shown = await fleet.call("library.show", {"ref": "pump-ae"})
    assert shown["resource"]["signature"]["features"] == models.FEATURES
    out = tmp_path / "pulled.onnx"
    await fleet.pull("pump-ae@1", out)
    assert out.read_bytes() == path.read_bytes()
