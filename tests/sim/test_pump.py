"""Physics: deterministic for a seed; each fault moves the signals the documented way."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.sim.pump import (
    SIGNAL_NAMES,
    Commands,
    Fault,
    PumpModel,
    due,
    simulate,
)


def run(faults: list[Fault], seconds: float, seed: int = 7) -> dict[str, np.ndarray]:
    _, cols = simulate(PumpModel(seed, faults), seconds)
    return cols


def test_same_seed_same_signals_and_different_seed_differs() -> None:
    a, b, c = run([], 20), run([], 20), run([], 20, seed=8)
    for name in SIGNAL_NAMES:
        assert np.array_equal(a[name], b[name])
    assert not np.array_equal(a["flow"], c["flow"])


def test_a_tick_can_be_recomputed_without_replaying_the_past() -> None:
    model = PumpModel(3)
    s = model.step(model.initial_state(), 1234)
    assert model.read(s) == model.read(s)
    assert np.array_equal(model.noise(1234), PumpModel(3).noise(1234))


def test_nominal_operating_point_is_plausible() -> None:
    cols = run([], 10)
    assert 95 < cols["flow"].mean() < 105
    assert 0.9 < cols["suction_pressure"].mean() < 1.1
    assert 5.0 < cols["discharge_pressure"].mean() < 6.0
    assert 30 < cols["motor_current"].mean() < 45
    assert 2900 < cols["speed"].mean() < 3000


def test_cavitation_lowers_suction_pressure_and_makes_flow_noisy() -> None:
    base, cav = run([], 60), run([Fault(20, 40, "cavitation")], 60)
    during = slice(200, 400)
    assert cav["suction_pressure"][during].mean() < base["suction_pressure"][during].mean() - 0.5
    assert cav["flow"][during].std() > 5 * base["flow"][during].std()
    assert cav["vibration"][during].mean() > base["vibration"][during].mean() + 2
    before = slice(0, 200)
    assert np.array_equal(cav["suction_pressure"][before], base["suction_pressure"][before])


def test_bearing_wear_raises_temperature_and_vibration_progressively() -> None:
    base, wear = run([], 300), run([Fault(0, 300, "bearing_wear")], 300)
    early, late = slice(100, 200), slice(2800, 3000)
    assert wear["vibration"][late].mean() > wear["vibration"][early].mean() + 2
    assert wear["bearing_temperature"][late].mean() > base["bearing_temperature"][late].mean() + 10
    assert wear["bearing_temperature"][late].mean() > wear["bearing_temperature"][early].mean()


def test_blocked_valve_lowers_flow_and_current_raises_discharge() -> None:
    base, blk = run([], 30), run([Fault(10, 30, "blocked_valve")], 30)
    during = slice(150, 300)
    assert blk["flow"][during].mean() < 0.6 * base["flow"][during].mean()
    assert (
        blk["discharge_pressure"][during].mean() > base["discharge_pressure"][during].mean() + 0.5
    )
    assert blk["motor_current"][during].mean() < base["motor_current"][during].mean() - 2


def test_stop_ramps_speed_down_and_flow_pressure_current_to_zero() -> None:
    model = PumpModel(1)
    s = model.with_commands(model.initial_state(), Commands(stop=True))
    s = model.step(s, 10)  # 1 s: still coasting
    assert 0 < model.read(s)["speed"] < 2950
    s = model.step(s, 40)
    v = model.read(s)
    assert v["speed"] == 0.0 and v["flow"] < 0.5 and v["motor_current"] < 0.5
    assert v["discharge_pressure"] - v["suction_pressure"] < 0.1
    s = model.step(model.with_commands(s, Commands()), 100)
    assert model.read(s)["flow"] > 90


def test_speed_setpoint_changes_flow() -> None:
    model = PumpModel(1)
    s = model.step(
        model.with_commands(model.initial_state(), Commands(speed_setpoint_rpm=2000)), 50
    )
    assert 1990 < model.read(s)["speed"] < 2010
    assert model.read(s)["flow"] < 60


def test_inject_and_clear_faults() -> None:
    model = PumpModel(1)
    s = model.inject(model.step(model.initial_state(), 10), "cavitation", 5)
    assert s.active_faults() == ["cavitation"]
    s = model.clear_faults(model.step(s, 10))
    assert s.active_faults() == [] and s.faults == (Fault(1.0, 2.0, "cavitation"),)
    with pytest.raises(ValueError, match="kind"):
        model.inject(s, "meltdown", 1)


def test_signal_rates() -> None:
    counts = {n: sum(n in due(k) for k in range(100)) for n in SIGNAL_NAMES}
    assert counts["flow"] == 100 and counts["motor_current"] == 50
    assert counts["bearing_temperature"] == 10 and counts["vibration"] == 20


def test_vibration_waveform_rms_follows_faults() -> None:
    model = PumpModel(2, [Fault(0, 10, "cavitation")])
    healthy = PumpModel(2)
    s = model.step(model.initial_state(), 20)
    x = model.vibration_waveform(s, 100)
    y = healthy.vibration_waveform(healthy.step(healthy.initial_state(), 20), 100)
    assert x.shape == (100,)
    assert np.sqrt((x**2).mean()) > 1.5 * np.sqrt((y**2).mean())
    assert np.array_equal(x, model.vibration_waveform(s, 100))
