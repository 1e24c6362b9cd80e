"""Physics of a centrifugal water-pump station: pure functions, no I/O.

The model is deterministic: given the seed, the fault list, the commands and the simulated
time, it gives the same signals. State changes only through `PumpModel.step`, which returns a
new `PumpState`; noise for tick k comes from a generator seeded with (seed, k), so any tick can
be recomputed without replaying the ones before it.

Hydraulics: pump curve H = H0·r² − k·Q² against a system curve H = Hs + Ks·Kv·Q² (r = speed
ratio, Kv = valve resistance factor), shaft power from hydraulic power and a parabolic
efficiency around the best-efficiency point, motor current from shaft power at 400 V.
Temperatures follow first-order lags toward targets that depend on speed and faults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

TICK_S = 0.1
"""Simulation step: the fastest signals update every tick (10 Hz)."""

FAULT_KINDS = ("cavitation", "bearing_wear", "blocked_valve")


@dataclass(frozen=True)
class SignalSpec:
    """One measured signal: its unit, update rate and noise standard deviation."""

    unit: str
    rate_hz: float
    noise: float


SIGNALS: dict[str, SignalSpec] = {
    "suction_pressure": SignalSpec("bar", 10.0, 0.01),
    "discharge_pressure": SignalSpec("bar", 10.0, 0.02),
    "flow": SignalSpec("m3/h", 10.0, 0.5),
    "speed": SignalSpec("rpm", 10.0, 2.0),
    "motor_current": SignalSpec("A", 5.0, 0.15),
    "vibration": SignalSpec("mm/s", 2.0, 0.05),
    "bearing_temperature": SignalSpec("degC", 1.0, 0.05),
    "fluid_temperature": SignalSpec("degC", 1.0, 0.03),
}
SIGNAL_NAMES = tuple(SIGNALS)


@dataclass(frozen=True)
class Fault:
    """A fault active on [start_s, end_s) of simulated time."""

    start_s: float
    end_s: float
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if not self.end_s > self.start_s:
            raise ValueError(f"fault end_s ({self.end_s}) must be after start_s ({self.start_s})")

    def progress(self, t: float) -> float:
        """0 before the fault, rising linearly to 1 at its end; 0 again after it."""
        if not self.start_s <= t < self.end_s:
            return 0.0
        return (t - self.start_s) / (self.end_s - self.start_s)

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True)
class PumpParams:
    """Plant constants (SI-ish units as named)."""

    nominal_rpm: float = 2950.0
    max_rpm: float = 3600.0
    accel_rpm_s: float = 600.0
    decel_rpm_s: float = 900.0
    shutoff_head_m: float = 60.0
    pump_k: float = 0.0015  # m per (m3/h)^2
    static_head_m: float = 15.0
    system_k: float = 0.003  # m per (m3/h)^2, valve fully open
    blocked_valve_factor: float = 6.0
    bep_flow: float = 100.0  # m3/h at nominal speed
    bep_efficiency: float = 0.75
    tank_pressure_bar: float = 1.2
    suction_loss_k: float = 2e-5  # bar per (m3/h)^2
    cavitation_suction_drop_bar: float = 0.85
    magnetizing_current_a: float = 6.0
    motor_voltage_v: float = 400.0
    motor_pf_eff: float = 0.86 * 0.92
    ambient_c: float = 25.0
    water_c: float = 18.0
    bearing_tau_s: float = 60.0
    fluid_tau_s: float = 300.0


@dataclass(frozen=True)
class Commands:
    """What an operator or a model can change: written through coils, registers or nodes."""

    stop: bool = False
    alarm_lamp: bool = False
    speed_setpoint_rpm: float = 2950.0


@dataclass(frozen=True)
class PumpState:
    """Everything the signals depend on besides the seed."""

    tick: int = 0
    speed_rpm: float = 2950.0
    bearing_c: float = 45.0
    fluid_c: float = 19.0
    commands: Commands = field(default_factory=Commands)
    faults: tuple[Fault, ...] = ()
    run_ticks: int = 0
    volume_l: float = 0.0

    @property
    def t(self) -> float:
        """Simulated seconds since the start."""
        return self.tick * TICK_S

    def active_faults(self) -> list[str]:
        return sorted({f.kind for f in self.faults if f.active(self.t)})


@dataclass(frozen=True)
class Hydraulics:
    """Noise-free operating point."""

    flow: float
    head_m: float
    suction_bar: float
    discharge_bar: float
    shaft_kw: float
    current_a: float
    vibration: float
    bearing_target_c: float
    fluid_target_c: float


def fault_level(faults: tuple[Fault, ...], kind: str, t: float) -> float:
    """1.0 while a fault of `kind` is active (progress for bearing wear), else 0.0."""
    level = 0.0
    for f in faults:
        if f.kind == kind and f.active(t):
            level = max(level, f.progress(t) if kind == "bearing_wear" else 1.0)
    return level


def operating_point(
    p: PumpParams, speed_rpm: float, faults: tuple[Fault, ...], t: float
) -> Hydraulics:
    """Solve pump curve against system curve at this speed and fault set."""
    r = max(speed_rpm, 0.0) / p.nominal_rpm
    cav = fault_level(faults, "cavitation", t)
    blocked = fault_level(faults, "blocked_valve", t)
    wear = fault_level(faults, "bearing_wear", t)
    kv = 1.0 + (p.blocked_valve_factor - 1.0) * blocked
    lift = max(p.shutoff_head_m * r * r - p.static_head_m, 0.0)
    flow = math.sqrt(lift / (p.pump_k + p.system_k * kv))
    flow *= 1.0 - 0.12 * cav  # vapour bubbles choke the impeller eye
    head = max(p.shutoff_head_m * r * r - p.pump_k * flow * flow, 0.0) * (1.0 - 0.08 * cav)
    suction = (
        p.tank_pressure_bar - p.suction_loss_k * flow * flow - p.cavitation_suction_drop_bar * cav
    )
    discharge = suction + head * 0.0981
    hydraulic_kw = 9.81 * flow / 3600.0 * head
    if r > 0.01:
        q_rel = flow / (p.bep_flow * r)
        eff = min(max(p.bep_efficiency * (1.0 - (q_rel - 1.0) ** 2), 0.2), 0.85)
        shaft_kw = hydraulic_kw / eff + 0.3 * r**3
        current = p.magnetizing_current_a * min(r, 1.0) + shaft_kw * 1000.0 / (
            math.sqrt(3.0) * p.motor_voltage_v * p.motor_pf_eff
        )
    else:
        shaft_kw, current = 0.0, 0.0
    vibration = 1.8 * r * r + 3.5 * cav * r + 4.5 * wear * r
    bearing_target = p.ambient_c + 20.0 * r + 35.0 * wear
    fluid_target = p.water_c + 0.8 * max(shaft_kw - hydraulic_kw, 0.0) * blocked + 1.0 * r
    return Hydraulics(
        flow, head, suction, discharge, shaft_kw, current, vibration, bearing_target, fluid_target
    )


class PumpModel:
    """The pump station. Pure: methods take a state and return values or a new state."""

    def __init__(
        self,
        seed: int = 0,
        faults: tuple[Fault, ...] | list[Fault] = (),
        params: PumpParams | None = None,
    ) -> None:
        self.seed = seed
        self.params = params or PumpParams()
        self.schedule = tuple(faults)

    def initial_state(self, commands: Commands | None = None) -> PumpState:
        """Steady state at nominal speed, temperatures at equilibrium."""
        cmd = commands or Commands(speed_setpoint_rpm=self.params.nominal_rpm)
        speed = 0.0 if cmd.stop else cmd.speed_setpoint_rpm
        op = operating_point(self.params, speed, self.schedule, 0.0)
        return PumpState(0, speed, op.bearing_target_c, op.fluid_target_c, cmd, self.schedule)

    def step(self, state: PumpState, ticks: int = 1) -> PumpState:
        """Advance `ticks` steps of TICK_S."""
        p = self.params
        speed, bearing, fluid = state.speed_rpm, state.bearing_c, state.fluid_c
        cmd = state.commands
        run_ticks, volume = state.run_ticks, state.volume_l
        target = 0.0 if cmd.stop else min(max(cmd.speed_setpoint_rpm, 0.0), p.max_rpm)
        for i in range(ticks):
            t = (state.tick + i) * TICK_S
            if speed < target:
                speed = min(target, speed + p.accel_rpm_s * TICK_S)
            else:
                speed = max(target, speed - p.decel_rpm_s * TICK_S)
            op = operating_point(p, speed, state.faults, t)
            bearing += (op.bearing_target_c - bearing) * TICK_S / p.bearing_tau_s
            fluid += (op.fluid_target_c - fluid) * TICK_S / p.fluid_tau_s
            run_ticks += speed > 0.0
            volume += op.flow * TICK_S / 3.6
        return replace(
            state,
            tick=state.tick + ticks,
            speed_rpm=speed,
            bearing_c=bearing,
            fluid_c=fluid,
            run_ticks=run_ticks,
            volume_l=volume,
        )

    def with_commands(self, state: PumpState, commands: Commands) -> PumpState:
        return replace(state, commands=commands)

    def inject(self, state: PumpState, kind: str, duration_s: float) -> PumpState:
        """Add a fault starting now."""
        fault = Fault(state.t, state.t + duration_s, kind)
        return replace(state, faults=(*state.faults, fault))

    def clear_faults(self, state: PumpState) -> PumpState:
        """End every active fault now (past ones stay, for the labels)."""
        t = state.t
        kept: list[Fault] = []
        for f in state.faults:
            if not f.active(t):
                kept.append(f)
            elif f.start_s < t:
                kept.append(replace(f, end_s=t))
        return replace(state, faults=tuple(kept))

    def noise(self, tick: int) -> np.ndarray:
        """Standard normals for tick `tick`, one per signal; a pure function of (seed, tick)."""
        return np.random.default_rng([self.seed, tick]).standard_normal(len(SIGNAL_NAMES))

    def read(self, state: PumpState) -> dict[str, float]:
        """Every signal's measured value at the state's time (noise included)."""
        t = state.t
        op = operating_point(self.params, state.speed_rpm, state.faults, t)
        cav = fault_level(state.faults, "cavitation", t)
        running = min(state.speed_rpm / self.params.nominal_rpm, 1.0)
        clean = {
            "suction_pressure": op.suction_bar,
            "discharge_pressure": op.discharge_bar,
            "flow": op.flow,
            "speed": state.speed_rpm,
            "motor_current": op.current_a,
            "vibration": op.vibration,
            "bearing_temperature": state.bearing_c,
            "fluid_temperature": state.fluid_c,
        }
        gain = {
            "suction_pressure": (1.0 + 4.0 * cav) * running,
            "discharge_pressure": (1.0 + 5.0 * cav) * running,
            "flow": (1.0 + 12.0 * cav) * running,
            "speed": running,
            "motor_current": (1.0 + 3.0 * cav) * running,
            "vibration": running,
            "bearing_temperature": 1.0,
            "fluid_temperature": 1.0,
        }
        z = self.noise(state.tick)
        out: dict[str, float] = {}
        for i, name in enumerate(SIGNAL_NAMES):
            value = clean[name] + z[i] * SIGNALS[name].noise * gain[name]
            if name in ("flow", "speed", "motor_current", "vibration"):
                value = max(value, 0.0)
            out[name] = float(value)
        return out

    def vibration_waveform(self, state: PumpState, n: int, rate_hz: float = 1000.0) -> np.ndarray:
        """n accelerometer samples (mm/s) starting at the state's time, deterministic per tick.

        Shaft frequency plus blade-pass (5 vanes) harmonics; cavitation adds broadband noise,
        bearing wear adds a bearing-defect tone with sidebands. RMS follows the `vibration` signal.
        """
        p = self.params
        t = state.t + np.arange(n) / rate_hz
        f_shaft = state.speed_rpm / 60.0
        cav = fault_level(state.faults, "cavitation", state.t)
        wear = fault_level(state.faults, "bearing_wear", state.t)
        r = state.speed_rpm / p.nominal_rpm
        rng = np.random.default_rng([self.seed, state.tick, 1])
        x = (
            1.8
            * r
            * r
            * math.sqrt(2.0)
            * (0.8 * np.sin(2 * np.pi * f_shaft * t) + 0.6 * np.sin(2 * np.pi * 5 * f_shaft * t))
        )
        x += 4.5 * wear * r * math.sqrt(2.0) * np.sin(2 * np.pi * 3.57 * f_shaft * t)
        x += (0.05 + 3.5 * cav * r) * rng.standard_normal(n)
        return x


def simulate(
    model: PumpModel, duration_s: float, state: PumpState | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run the model for `duration_s` seconds; return times and every signal at 10 Hz."""
    s = state or model.initial_state()
    n = round(duration_s / TICK_S)
    times = np.empty(n)
    cols = {name: np.empty(n) for name in SIGNAL_NAMES}
    for k in range(n):
        values = model.read(s)
        times[k] = s.t
        for name, v in values.items():
            cols[name][k] = v
        s = model.step(s)
    return times, cols


def due(tick: int) -> list[str]:
    """Signals that produce a new reading at this tick (by their rate)."""
    return [n for n, s in SIGNALS.items() if tick % max(round(1.0 / (s.rate_hz * TICK_S)), 1) == 0]


def tank_level(seed: int, tick: int) -> float:
    """Level (m) of the suction tank, read by the second Modbus device (unit 2)."""
    t = tick * TICK_S
    z = float(np.random.default_rng([seed, tick, 2]).standard_normal())
    return 3.0 + 0.4 * math.sin(2 * math.pi * t / 600.0) + 0.005 * z
