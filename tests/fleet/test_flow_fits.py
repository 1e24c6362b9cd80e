"""The check `flow push` runs: a flow file, as the user wrote it, against a stored signature,
with the inference service's own `check_fits` (through `FlowSpec.inference_settings`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgefleet.flow import parse_flow
from services.inference.config import InferenceSettings
from services.inference.signature import ModelSignature, check_fits, read_signature
from shared.errors import ModelError
from tests.inference import models

ROOT = Path(__file__).resolve().parents[2]
FLOW = yaml.safe_load((ROOT / "examples" / "pump-anomaly.yaml").read_text())
NAMES = [f["name"] for f in FLOW["align"]["features"]]


def settings_of(flow: dict[str, object]) -> InferenceSettings:
    return InferenceSettings.model_validate(parse_flow(flow).inference_settings())


def stored(path: Path, **kw: object) -> ModelSignature:
    """The signature as the fleet stores it: JSON, read back."""
    sig = read_signature(models.autoencoder(path, f=6, features=NAMES, batch="N", **kw))  # type: ignore[arg-type]
    return ModelSignature.model_validate_json(sig.model_dump_json())


def test_the_example_flow_fits_a_model_trained_on_its_features(tmp_path: Path) -> None:
    flow = {**FLOW, "model": {"ref": "pump-ae@3", "outputs": {"score": "score"}}}
    fit = check_fits(stored(tmp_path / "m.onnx"), settings_of(flow))
    assert fit.features == NAMES and [s.output for s in fit.selectors] == ["score"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("swap", ["model pump-ae@3 was trained on features", "'discharge_pressure', 'suction"]),
        ("window", ["has shape ['N', 6]", "the flow feeds [N, 4, 6]"]),
        ("output", ["selects output 'anomaly'", "['reconstruction', 'score']"]),
    ],
)
def test_a_flow_that_does_not_fit_is_refused_with_the_reason(
    tmp_path: Path, change: str, words: list[str]
) -> None:
    align = dict(FLOW["align"])
    model: dict[str, object] = {"ref": "pump-ae@3"}
    if change == "swap":
        features = list(align["features"])
        features[0], features[1] = features[1], features[0]
        align["features"] = features
    elif change == "window":
        align["window"] = 4
    else:
        model["outputs"] = {"score": "anomaly"}
    with pytest.raises(ModelError) as err:
        check_fits(
            stored(tmp_path / "m.onnx"), settings_of({**FLOW, "align": align, "model": model})
        )
    for word in words:
        assert word in str(err.value)
