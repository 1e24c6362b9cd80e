"""`flow diff` over the fleet: flow file, model and scripts in one view."""

from __future__ import annotations

from pathlib import Path

from edgefleet.fleet.client import FleetClient
from tests.fleet.test_flows import flow_text, push_flow
from tests.inference import models


async def test_diff_of_two_generations(fleet: FleetClient, tmp_path: Path) -> None:
    await fleet.push(models.isolation_forest(tmp_path / "a.onnx"), "pump-ae", "model")
    script = tmp_path / "post.py"
    script.write_text("def postprocess(outputs):\n    return outputs\n")
    await fleet.push(script, "post", "script")
    text = flow_text({"ref": "pump-ae", "postprocess": {"ref": "post"}})
    await push_flow(fleet, text)
    await fleet.push(models.isolation_forest(tmp_path / "b.onnx", seed=7), "pump-ae", "model")
    script.write_text(
        "def postprocess(outputs):\n"
        "    outputs['alarm'] = outputs['scores'] < 0\n"
        "    return outputs\n"
    )
    await fleet.push(script, "post", "script")
    await push_flow(fleet, text.replace("max_delay_ms: 200", "max_delay_ms: 300"))

    result = await fleet.call("flow.diff", {"a": "pump-anomaly@1", "b": "pump-anomaly@2"})
    diff = result["diff"]
    assert (
        "-  max_delay_ms: 200" in diff["flow_file"] and "+  max_delay_ms: 300" in diff["flow_file"]
    )
    assert {(p["old"], p["new"]) for p in diff["pins"]} == {
        ("pump-ae@1", "pump-ae@2"),
        ("post@1", "post@2"),
    }
    assert diff["model"]["old_sha256"] != diff["model"]["new_sha256"]
    assert diff["model"]["train_stats"]  # the training data of each feature moved
    assert "+    outputs['alarm']" in diff["scripts"][0]["diff"]
    assert "pump-ae@2" in result["text"]
    same = await fleet.call("flow.diff", {"a": "pump-anomaly@2", "b": "pump-anomaly@2"})
    assert same["diff"]["flow_file"] == "" and same["diff"]["pins"] == []
