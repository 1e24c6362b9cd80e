"""Drift end to end: the simulator's Modbus server → the Modbus adapter → the aligner →
inference, all on the real broker. The model's train_stats come from a short recording of the
aligned samples in normal operation; cavitation then moves the suction pressure, and the
inference status says so for that feature and not for the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefleet.sim import registers as regmap
from edgefleet.sim.plant import PlantSimulator
from services.aligner.config import AlignerConfig
from services.aligner.service import main as aligner_main
from services.inference.config import InferenceConfig
from services.inference.service import main as inference_main
from services.modbus.config import ModbusConfig
from services.modbus.service import main as modbus_main
from shared.config import validate
from shared.messages import SampleBatch
from shared.topics import Topics
from tests.helpers import Probe, running
from tests.inference import models

FLOW = "pump"
INFERENCE = "inference-pump"
# (signal, input register address): float or fine-scaled registers where the map has them.
# Cavitation moves the suction pressure; speed and the two temperatures (slow first-order
# lags, unaffected by cavitation) stay where they were.
POINTS = [
    ("suction_pressure", 14),
    ("speed", 7),
    ("bearing_temperature", 28),
    ("fluid_temperature", 5),
]
FEATURES = [name for name, _ in POINTS]
# The simulator's documented noise (docs/simulator.md): the floor of the recorded std, so that a
# quantised register that happened not to move during the recording gives no zero std.
NOISE = {
    "suction_pressure": 0.01,
    "speed": 2.0,
    "bearing_temperature": 0.05,
    "fluid_temperature": 0.03,
}
WINDOW = 16  # health_window: drift over the last 1.6 s of samples
NORMAL_SAMPLES = 40


def modbus_point(name: str, address: int) -> dict[str, Any]:
    [p] = [
        p
        for p in regmap.POINTS
        if (p.unit, p.table, p.address, p.signal) == (1, "input", address, name)
    ]
    return {
        "name": name,
        "address": address,
        "type": p.dtype,
        "scale": p.scale,
        "offset": p.offset,
        "byte_order": p.byte_order,
        "word_order": p.word_order,
    }


def configs(
    base: dict[str, Any], port: int, model: Path
) -> tuple[ModbusConfig, AlignerConfig, Any]:
    modbus = validate(
        ModbusConfig,
        {
            **base,
            "instance": "modbus-plc1",
            "source": "plc1",
            "device": {"port": port, "timeout_s": 2.0, "dead_after_s": 10.0},
            "poll_ms": 100,
            "blocks": [{"table": "input", "points": [modbus_point(n, a) for n, a in POINTS]}],
        },
        "test",
    )
    features = [
        {"signal": f"plc1/{name}", "fill": "hold", "max_age_ms": 2000, "name": name}
        for name in FEATURES
    ]
    flow = {
        "name": FLOW,
        "align": {"period_ms": 100, "max_delay_ms": 500, "features": features},
    }
    aligner = validate(AlignerConfig, {**base, "instance": "aligner-pump", "flow": flow}, "test")

    def inference() -> InferenceConfig:
        data = {
            **base,
            "instance": INFERENCE,
            "flow": FLOW,
            "model": {"path": str(model)},
            "features": FEATURES,
            "health_window": WINDOW,
            "watch_s": 0,
        }
        return validate(InferenceConfig, data, "test")

    return modbus, aligner, inference


def recorded(probe: Probe, topics: Topics) -> np.ndarray[Any, Any]:
    got = [SampleBatch.from_wire(d) for d in probe.decoded(topics.samples(FLOW))]
    return np.concatenate([g.x for g in got]) if got else np.empty((0, len(FEATURES)))


def model_with_train_stats(path: Path, x: np.ndarray[Any, Any]) -> Path:
    """A small linear model whose `edgefleet.train_stats` are the recording's mean and std."""
    std = np.maximum(x.std(0), [NOISE[f] for f in FEATURES])
    stats = {"mean": x.mean(0).tolist(), "std": std.tolist()}
    model = onnx.load(models.linear(path, f=len(FEATURES)))
    return models.save(models.add_metadata(model, FEATURES, stats), path)


async def inference_status(probe: Probe, topics: Topics, predicate: Any) -> dict[str, Any]:
    """The first status whose inference section satisfies `predicate`: that section."""

    def ok(s: dict[str, Any]) -> bool:
        section = s.get("health", {}).get("inference")
        return section is not None and bool(predicate(section))

    [status] = await probe.wait_for(topics.status(INFERENCE), ok, timeout=60)
    section: dict[str, Any] = status["health"]["inference"]
    return section


def suction_mean(section: dict[str, Any]) -> float:
    mean = section["model"]["health"]["inputs"]["suction_pressure"]["mean"]
    return np.inf if mean is None else float(mean)


async def test_cavitation_shows_as_drift_of_the_suction_pressure(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    model = tmp_path / "pump.onnx"
    async with PlantSimulator(opcua=False, seed=3) as sim:
        modbus, aligner, inference = configs(base_config, sim.modbus_port or 0, model)
        async with running(modbus_main(modbus)), running(aligner_main(aligner)):
            # Normal operation: record the aligned samples and train on them.
            await probe.wait_for(
                topics.samples(FLOW),
                lambda _: len(recorded(probe, topics)) >= NORMAL_SAMPLES,
                timeout=60,
            )
            normal = recorded(probe, topics)
            assert not np.isnan(normal).any()
            model_with_train_stats(model, normal)
            normal_mean = float(np.mean(normal[:, 0]))
            async with running(inference_main(inference())):
                calm = (
                    await inference_status(
                        probe, topics, lambda s: s["model"]["health"]["window_samples"] == WINDOW
                    )
                )["model"]["health"]
                sim.inject("cavitation", 600)
                # The suction pressure falls (~0.85 bar) ...
                first = await inference_status(
                    probe, topics, lambda s: suction_mean(s) < normal_mean - 0.5
                )
                # ... then a whole window of samples later, every one of them is from the fault.
                faulty = (
                    await inference_status(
                        probe, topics, lambda s: s["results"] >= first["results"] + WINDOW
                    )
                )["model"]["health"]
    before, after = calm["drift"], faulty["drift"]
    others = [f for f in FEATURES if f != "suction_pressure"]
    assert before["suction_pressure"] < 3  # the training distribution: no drift to speak of
    assert after["suction_pressure"] > before["suction_pressure"] + 15
    assert after["suction_pressure"] > 5 * max(after[f] for f in others)
    assert faulty["drift_max"] == after["suction_pressure"]
    assert max(after[f] for f in others) < 5
    # ~0.85 bar below the recorded normal mean (less the smaller suction loss at lower flow)
    drop = normal_mean - faulty["inputs"]["suction_pressure"]["mean"]
    assert 0.6 < drop < 1.1
