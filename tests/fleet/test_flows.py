"""Flow versions: pinning, the node's own check at push time, history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from onnx import TensorProto

from edgefleet.fleet.client import FleetClient
from edgefleet.fleet.errors import FleetError
from tests.inference import models


def flow_text(
    model: dict[str, Any] | None,
    features: list[str] = models.FEATURES,
    window: int = 1,
    name: str = "pump-anomaly",
    outputs: dict[str, str] | None = None,
) -> str:
    flow: dict[str, Any] = {
        "name": name,
        "align": {
            "period_ms": 100,
            "max_delay_ms": 200,
            "window": window,
            "features": [
                {"signal": f"plc1/{f}", "fill": "hold", "max_age_ms": 500, "name": f}
                for f in features
            ],
        },
    }
    if model is not None:
        flow["model"] = {**model, **({"outputs": outputs} if outputs else {})}
    return "# written by hand\n" + yaml.safe_dump(flow, sort_keys=False)


async def push_flow(fleet: FleetClient, text: str, note: str = "") -> dict[str, Any]:
    return await fleet.call("flow.push", {"text": text, "filename": "f.yaml", "note": note})


async def refused(fleet: FleetClient, text: str) -> FleetError:
    with pytest.raises(FleetError) as info:
        await push_flow(fleet, text)
    return info.value


async def test_pins_history_and_identical_push(fleet: FleetClient, tmp_path: Path) -> None:
    await fleet.push(models.isolation_forest(tmp_path / "a.onnx"), "pump-ae", "model")
    script = tmp_path / "scale.py"
    script.write_text("def postprocess(outputs):\n    return outputs\n")
    await fleet.push(script, "scale", "script")
    text = flow_text({"ref": "pump-ae", "postprocess": {"ref": "scale"}})
    first = await push_flow(fleet, text, "first")
    flow = first["flow"]
    assert first["created"] and flow["ref"] == "pump-anomaly@1"
    assert flow["text"] == text  # as written
    assert flow["resolved"]["model"] == {"ref": "pump-ae@1", "postprocess": {"ref": "scale@1"}}
    assert {r: p["ref"] for r, p in flow["pins"].items()} == {
        "model": "pump-ae@1",
        "postprocess": "scale@1",
    }
    assert not (await push_flow(fleet, text))["created"]  # same text, same pins

    # a new model version: the same text pins it, so it is a new flow version
    await fleet.push(models.isolation_forest(tmp_path / "b.onnx", seed=3), "pump-ae", "model")
    second = await push_flow(fleet, text, "new model")
    assert second["flow"]["ref"] == "pump-anomaly@2"
    assert second["flow"]["pins"]["model"]["ref"] == "pump-ae@2"

    history = await fleet.call("flow.history", {"name": "pump-anomaly"})
    assert [(v["version"], v["model"], v["note"]) for v in history["versions"]] == [
        (1, "pump-ae@1", "first"),
        (2, "pump-ae@2", "new model"),
    ]
    listed = (await fleet.call("flow.list"))["flows"]
    assert [(f["name"], f["latest"], f["model"]) for f in listed] == [
        ("pump-anomaly", 2, "pump-ae@2")
    ]
    shown = await fleet.call("flow.show", {"ref": "pump-anomaly@1"})
    assert shown["flow"]["pins"]["model"]["ref"] == "pump-ae@1"

    # pinned: the version cannot be deleted, only archived; archived: no new flow may use it
    with pytest.raises(FleetError) as info:
        await fleet.call("library.delete", {"ref": "pump-ae@1"})
    assert info.value.code == "in_use" and "pump-anomaly@1" in info.value.message
    await fleet.call("library.archive", {"ref": "pump-ae@2"})
    third = await push_flow(fleet, text)  # `ref: pump-ae` → the latest active: @1
    assert third["flow"]["pins"]["model"]["ref"] == "pump-ae@1"
    error = await refused(fleet, flow_text({"ref": "pump-ae@2"}))
    assert error.code == "archived"


async def test_local_paths_and_bad_refs_are_refused(fleet: FleetClient, tmp_path: Path) -> None:
    await fleet.push(models.mlp(tmp_path / "m.onnx"), "scorer", "model")
    error = await refused(fleet, flow_text({"path": "model.onnx"}))
    assert error.code == "local_path" and "edgefleet library push model.onnx" in error.message
    error = await refused(fleet, flow_text({"ref": "scorer", "preprocess": "scale.py"}))
    assert error.code == "local_path" and "model.preprocess" in error.message
    error = await refused(fleet, flow_text({"ref": "nothing-here"}))
    assert error.code == "not_found"
    error = await refused(fleet, flow_text({"ref": "scorer", "postprocess": {"ref": "scorer"}}))
    assert error.code == "invalid" and "not a script" in error.message
    error = await refused(fleet, "name: x\nalign: {period_ms: 100}\n")
    assert error.code == "invalid" and "align" in error.message
    error = await refused(fleet, "name: [unclosed\n")
    assert error.code == "invalid" and "YAML" in error.message
    assert (await fleet.call("flow.list"))["flows"] == []


FOUR = models.FEATURES
THREE = models.FEATURES[:3]


async def test_exported_shapes_accepted_when_they_fit(fleet: FleetClient, tmp_path: Path) -> None:
    """Each shape data scientists export: a fitting flow is accepted, another refused, with
    the reason the node would give."""
    shapes: list[tuple[str, Path, dict[str, Any] | None, dict[str, Any], str]] = [
        # (name, model, fitting flow, refused flow, words of the reason)
        (
            "iforest",
            models.isolation_forest(tmp_path / "if.onnx"),
            {"features": FOUR},
            {"features": ["temp", "pressure", "vib_rms", "flow"]},
            "trained on features",
        ),
        (
            "zipmap",
            models.zipmap_classifier(tmp_path / "zm.onnx"),
            {"features": FOUR},
            {"features": THREE},
            "takes 4 features",
        ),
        (
            "f64-pipeline",
            models.float64_pipeline(tmp_path / "f64.onnx"),
            {"features": FOUR},
            {"features": THREE},
            "takes 4 features",
        ),
        (
            "batch1",
            models.linear(tmp_path / "b1.onnx", batch=1),
            {"features": FOUR},
            {"features": FOUR, "window": 3},
            "shape",
        ),
        (
            "window",
            models.window_model(tmp_path / "w.onnx", window=5),
            {"features": FOUR, "window": 5},
            {"features": FOUR, "window": 3},
            "windows of 5",
        ),
        (
            "random-forest",  # ZipMap probabilities: a flow selects a class the model has
            models.random_forest(tmp_path / "rf.onnx"),
            {"features": FOUR, "outputs": {"p_fault": "output_probability[2]"}},
            {"features": FOUR, "outputs": {"p_fault": "output_probability[7]"}},
            "7",
        ),
        (
            "pca",
            models.pca_pipeline(tmp_path / "pca.onnx"),
            {"features": FOUR},
            {"features": ["flow", "temp", "vib_rms", "pressure"]},
            "trained on features",
        ),
        (
            "autoencoder-batch1",
            models.autoencoder(tmp_path / "ae.onnx", batch=1),
            {"features": FOUR},
            {"features": THREE},
            "the flow feeds 3",
        ),
        (
            "torch",
            models.torch_export(tmp_path / "torch.onnx"),
            {"features": FOUR},
            {"features": FOUR, "window": 4},
            "shape",
        ),
        (
            "fixed-batch-8",
            models.linear(tmp_path / "b8.onnx", batch=8),
            None,  # no flow fits a fixed batch of 8
            {"features": FOUR},
            "fixed batch of 8",
        ),
    ]
    for name, path, fits, misfits, reason in shapes:
        await fleet.push(path, name, "model")
        if fits is not None:
            ok = await push_flow(fleet, flow_text({"ref": name}, name=f"flow-{name}", **fits))
            assert ok["flow"]["pins"]["model"]["ref"] == f"{name}@1", name
        error = await refused(fleet, flow_text({"ref": name}, name=f"bad-{name}", **misfits))
        assert error.code == "does_not_fit" and reason in error.message, (name, error.message)
    names = {f["name"] for f in (await fleet.call("flow.list"))["flows"]}
    assert not any(n.startswith("bad-") for n in names)


async def test_float64_linear_and_preprocess_width(fleet: FleetClient, tmp_path: Path) -> None:
    """A preprocess script that changes the width is run (in a child process) to know it."""
    await fleet.push(
        models.linear(tmp_path / "l.onnx", f=2, dtype=TensorProto.DOUBLE), "l2", "model"
    )
    script = tmp_path / "pick.py"
    script.write_text("def preprocess(x):\n    return x[..., :2]\n")
    await fleet.push(script, "pick2", "script")
    ok = await push_flow(fleet, flow_text({"ref": "l2", "preprocess": {"ref": "pick2"}}))
    assert ok["flow"]["pins"]["preprocess"]["ref"] == "pick2@1"
    error = await refused(fleet, flow_text({"ref": "l2"}, name="no-script"))
    assert error.code == "does_not_fit"


async def test_a_pinned_shadow_model_is_checked_like_the_live_one(
    fleet: FleetClient, tmp_path: Path
) -> None:
    """`model.shadow: {ref: ...}` goes through the same check_fits as the live model."""
    await fleet.push(models.mlp(tmp_path / "live.onnx"), "live-ae", "model")
    await fleet.push(models.mlp(tmp_path / "cand.onnx", seed=5), "cand-ae", "model")
    wide = len(models.FEATURES) + 1
    await fleet.push(models.mlp(tmp_path / "wide.onnx", f=wide), "wide-ae", "model")
    ok = await push_flow(fleet, flow_text({"ref": "live-ae", "shadow": {"ref": "cand-ae"}}))
    assert ok["flow"]["pins"]["shadow"]["ref"] == "cand-ae@1"
    error = await refused(
        fleet, flow_text({"ref": "live-ae", "shadow": {"ref": "wide-ae"}}, name="bad-shadow")
    )
    assert error.code == "does_not_fit" and "wide-ae@1" in error.message
    assert f"takes {wide} features" in error.message, error.message
