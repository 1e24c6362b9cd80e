"""`flow diff`: the flow file, the pins, the model and the scripts of two versions in one result,
on signatures read from real exported models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.fleet.diff import (
    FlowDiff,
    FlowVersion,
    diff_features,
    diff_flows,
    render_text,
)
from services.inference.signature import ModelSignature, read_signature
from tests.inference import models

F = models.FEATURES
FLOW_1 = """name: pump-anomaly
align:
  period_ms: 100
  window: 1
  features: [pressure, temp, vib_rms, flow]
model: {ref: pump-ae}
preprocess: {ref: scale}
"""
FLOW_2 = FLOW_1.replace("period_ms: 100", "period_ms: 50").replace(
    "[pressure, temp, vib_rms, flow]", "[temp, pressure, vib_rms, flow, speed]"
)
SCALE_1 = "def preprocess(x):\n    return x / 2\n"
SCALE_2 = "def preprocess(x):\n    return x / 3\n"


def autoencoder(path: Path, **kw: object) -> ModelSignature:
    return read_signature(models.autoencoder(path, **kw))  # type: ignore[arg-type]


@pytest.fixture
def versions(tmp_path: Path) -> tuple[FlowVersion, FlowVersion]:
    old = autoencoder(tmp_path / "a.onnx", threshold=0.8)
    new = autoencoder(
        tmp_path / "b.onnx",
        f=5,
        features=["temp", "pressure", "vib_rms", "flow", "speed"],
        threshold=0.75,
        seed=9,
    )
    return (
        FlowVersion(
            "pump-anomaly@1",
            FLOW_1,
            {"pump-ae@3": old.sha256, "scale@1": "a" * 64, "clip@1": "c" * 64},
            old,
            {"scale": SCALE_1, "clip": "def postprocess(o):\n    return o\n"},
        ),
        FlowVersion(
            "pump-anomaly@2",
            FLOW_2,
            {"pump-ae@4": new.sha256, "scale@2": "b" * 64},
            new,
            {"scale": SCALE_2},
        ),
    )


def test_the_same_version_has_no_changes(versions: tuple[FlowVersion, FlowVersion]) -> None:
    old, _ = versions
    diff = diff_flows(old, old)
    assert not diff.changed and diff.flow_file == "" and diff.pins == [] and diff.scripts == []
    assert diff.model is not None and not diff.model.changed
    assert "no changes" in render_text(diff)


def test_flow_file_as_a_unified_diff(versions: tuple[FlowVersion, FlowVersion]) -> None:
    diff = diff_flows(*versions)
    lines = diff.flow_file.splitlines()
    assert lines[:2] == ["--- pump-anomaly@1", "+++ pump-anomaly@2"]
    assert "-  period_ms: 100" in lines and "+  period_ms: 50" in lines
    assert "   window: 1" in lines  # context


def test_pins_by_library_name(versions: tuple[FlowVersion, FlowVersion]) -> None:
    pins = {p.name: p for p in diff_flows(*versions).pins}
    assert set(pins) == {"pump-ae", "scale", "clip"}
    assert (pins["pump-ae"].status, pins["pump-ae"].old, pins["pump-ae"].new) == (
        "changed",
        "pump-ae@3",
        "pump-ae@4",
    )
    assert pins["clip"].status == "removed" and pins["clip"].new is None


def test_model_signature_features_stats_threshold(
    versions: tuple[FlowVersion, FlowVersion],
) -> None:
    m = diff_flows(*versions).model
    old, new = versions[0].model, versions[1].model
    assert old is not None and new is not None
    assert m is not None and m.digest_changed and m.changed
    assert (m.old_ref, m.new_ref) == ("pump-ae@3", "pump-ae@4")  # found by digest among pins
    x = {(t.side, t.name): t for t in m.tensors}
    assert x["input", "x"].status == "changed"
    assert x["input", "x"].old is not None and x["input", "x"].old.shape == [1, 4]
    assert x["input", "x"].new is not None and x["input", "x"].new.shape == [1, 5]
    assert x["output", "reconstruction"].status == "changed"
    assert ("output", "score") not in x  # [1, 1] float in both
    assert m.features is not None
    assert m.features.added == ["speed"] and m.features.removed == [] and m.features.reordered
    assert [d.feature for d in m.train_stats] == ["temp", "pressure", "vib_rms", "flow"]
    assert old.train_stats is not None and new.train_stats is not None
    for d in m.train_stats:
        a, b = old.train_stats[d.feature], new.train_stats[d.feature]
        assert a.mean is not None and b.mean is not None and a.std is not None
        assert d.mean_delta == pytest.approx(b.mean - a.mean)
        assert d.shift_sigma == pytest.approx((b.mean - a.mean) / a.std)
    assert m.threshold is not None and m.threshold.delta == pytest.approx(-0.05)


def test_scripts_as_unified_diffs(versions: tuple[FlowVersion, FlowVersion]) -> None:
    scripts = {s.name: s for s in diff_flows(*versions).scripts}
    scale = scripts["scale"]
    assert (scale.status, scale.old_ref, scale.new_ref) == ("changed", "scale@1", "scale@2")
    assert "-    return x / 2" in scale.diff and "+    return x / 3" in scale.diff
    assert scale.diff.startswith("--- scale@1\n+++ scale@2\n")
    assert scripts["clip"].status == "removed" and "-def postprocess(o):" in scripts["clip"].diff


def test_producer_opsets_and_outputs_of_another_export(tmp_path: Path) -> None:
    sk = read_signature(models.isolation_forest(tmp_path / "if.onnx"))
    pt = read_signature(models.torch_export(tmp_path / "pt.onnx"))
    a = FlowVersion("f@1", FLOW_1, {"m@1": sk.sha256}, sk)
    b = FlowVersion("f@2", FLOW_1, {"m@2": pt.sha256}, pt)
    m = diff_flows(a, b).model
    assert m is not None
    fields = {f.field: (f.old, f.new) for f in m.fields}
    assert fields["producer"] == ("skl2onnx 1.20.0", "pytorch 2.5.1")
    assert fields["opset ai.onnx.ml"] == ("3", None)
    status = {(t.side, t.name): t.status for t in m.tensors}
    assert status == {
        ("input", "X"): "removed",
        ("input", "input.1"): "added",
        ("output", "label"): "removed",
        ("output", "scores"): "removed",
        ("output", "9"): "added",
    }
    assert m.features is None and m.threshold is not None and m.threshold.old is None


def test_a_model_added_to_a_flow(tmp_path: Path) -> None:
    sig = read_signature(models.torch_export(tmp_path / "pt.onnx"))
    diff = diff_flows(
        FlowVersion("f@1", FLOW_1, {}), FlowVersion("f@2", FLOW_1, {"m@1": sig.sha256}, sig)
    )
    assert diff.model is not None and diff.model.old_sha256 is None and diff.model.digest_changed
    assert [t.status for t in diff.model.tensors] == ["added", "added"]
    assert diff.model.features is not None and diff.model.features.added == F
    assert [p.status for p in diff.pins] == ["added"]
    assert "no model" in render_text(diff)
    assert diff_flows(FlowVersion("f@1", "a\n", {}), FlowVersion("f@2", "a\n", {})).model is None


def test_json_round_trip(versions: tuple[FlowVersion, FlowVersion]) -> None:
    diff = diff_flows(*versions)
    text = diff.model_dump_json()
    assert FlowDiff.model_validate_json(text) == diff
    data = json.loads(text)
    assert data["v"] == 1 and data["model"]["threshold"]["new"] == 0.75


def test_terminal_rendering(versions: tuple[FlowVersion, FlowVersion]) -> None:
    diff = diff_flows(*versions)
    text = render_text(diff, width=120)
    for needle in (
        "flow pump-anomaly@1 → pump-anomaly@2",
        "+  period_ms: 50",
        "pump-ae@3 sha256:",
        "input x",
        "tensor(float) [1, 4]",
        "tensor(float) [1, 5]",
        "added: speed",
        "reordered",
        "train stats",
        "threshold: 0.8 → 0.75 (Δ -0.05)",
        "scale: changed (scale@1 → scale@2)",
    ):
        assert needle in text, needle
    assert "\x1b[" not in text and "\x1b[" in render_text(diff, color=True)


def test_text_without_a_final_newline_is_marked() -> None:
    a = FlowVersion("f@1", "name: f\n", {})
    b = FlowVersion("f@2", "name: f", {})
    assert "(no newline at end of file)" in diff_flows(a, b).flow_file


names = st.lists(st.sampled_from("abcdefg"), unique=True, max_size=7)


@given(names, names)
def test_feature_changes_are_consistent(old: list[str], new: list[str]) -> None:
    change = diff_features(old, new)
    if old == new:
        assert change is None
        return
    assert change is not None
    assert set(change.added) == set(new) - set(old)
    assert set(change.removed) == set(old) - set(new)
    common = set(old) & set(new)
    assert change.reordered == ([f for f in old if f in common] != [f for f in new if f in common])
