"""The aligner fed by the real mqtt-ingest service: a gateway's JSON on foreign topics becomes
ReadingBatches, and those become the grid of samples, with the values computed here by numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

from services.aligner.config import AlignerConfig
from services.aligner.service import main as aligner_main
from services.mqtt_ingest.config import IngestConfig
from services.mqtt_ingest.service import main as ingest_main
from shared.config import validate
from shared.messages import FeatureState, SampleBatch, now_ns
from shared.topics import Topics
from tests.helpers import Probe, running

MS = 1_000_000
S = 1_000_000_000
PERIOD = 100 * MS
STEPS = 100  # 10 s of data time, one gateway message per fast/medium signal per 100 ms
ALIGNER = "aligner-f"
INGEST = "ingest-gw"
AGGS = ["mean", "std", "rms", "min", "max", "count"]


def ingest_config(base: dict[str, Any], site: str) -> IngestConfig:
    gw = f"{site}-gw"
    inputs = [
        {  # 1 kHz: 100 values per message, timestamp of the first one in µs
            "topic": f"{gw}/vib",
            "source": "vib",
            "format": "json",
            "timestamp": {"path": "t0", "unit": "us"},
            "signals": [{"name": "x", "path": "samples", "period_us": 1000}],
        },
        {  # 10 Hz scalar, timestamp in ms
            "topic": f"{gw}/plc",
            "source": "plc",
            "timestamp": {"path": "ts", "unit": "ms"},
            "signals": [{"name": "p", "path": "data.pressure"}],
        },
        {  # 0.2 Hz scalar, timestamp in ms
            "topic": f"{gw}/opc",
            "source": "opc",
            "timestamp": {"path": "ts", "unit": "ms"},
            "signals": [{"name": "temp", "path": "temp"}],
        },
    ]
    return validate(IngestConfig, {**base, "instance": INGEST, "inputs": inputs}, "test")


def aligner_config(base: dict[str, Any]) -> AlignerConfig:
    features: list[dict[str, Any]] = [{"signal": "vib/x", "agg": a} for a in AGGS]
    features += [
        {"signal": "plc/p", "fill": "linear", "max_age_ms": 200, "name": "p_linear"},
        {"signal": "plc/p", "fill": "hold", "max_age_ms": 200, "name": "p_hold"},
        {"signal": "opc/temp", "fill": "hold", "max_age_ms": 6000, "name": "temp_hold"},
        {"signal": "opc/temp", "fill": "linear", "max_age_ms": 6000, "name": "temp_linear"},
    ]
    # Deadlines far beyond the test's run time: only early emission acts, so the samples do
    # not depend on how fast this machine is.
    flow = {
        "name": "f",
        "align": {
            "period_ms": 100,
            "max_delay_ms": 300_000,
            "on_missing": "nan",
            "features": features,
        },
    }
    return validate(AlignerConfig, {**base, "instance": ALIGNER, "flow": flow}, "test")


def hold(t: np.ndarray[Any, Any], tr: np.ndarray[Any, Any], vr: np.ndarray[Any, Any]) -> Any:
    """The last reading at or before each t (all within max_age in this test)."""
    return vr[np.searchsorted(tr, t, side="right") - 1]


def gathered(probe: Probe, topics: Topics) -> SampleBatch:
    got = [SampleBatch.from_wire(d) for d in probe.decoded(topics.samples("f"))]
    return SampleBatch(
        "f",
        got[0].features,
        np.concatenate([g.t for g in got]),
        np.concatenate([g.x for g in got]),
        np.concatenate([g.state for g in got]),
        np.concatenate([g.age_ms for g in got]),
    )


async def test_gateway_json_through_ingest_gives_the_expected_grid(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    gw = f"{site}-gw"
    # Data times on a fixed grid, 30 s in the past: old enough to be complete before any
    # deadline (max_delay is 300 s), recent enough that no grid catch-up or late drop applies.
    t0 = (now_ns() // S - 30) * S
    rng = np.random.default_rng(7)
    vib_t = t0 + np.arange(STEPS * 100, dtype=np.int64) * MS
    vib_x = np.round(5 + 2 * rng.standard_normal(vib_t.size), 4)
    plc_t = t0 + np.arange(STEPS, dtype=np.int64) * PERIOD + 30 * MS
    plc_x = np.round((plc_t - t0) / S + rng.standard_normal(STEPS), 4)
    opc_t = t0 + np.arange(3, dtype=np.int64) * 5 * S  # 0, 5, 10 s
    opc_x = np.array([20.0, 21.5, 19.25])

    await probe.subscribe(topics.everything())
    async with (
        running(ingest_main(ingest_config(base_config, site))),
        running(aligner_main(aligner_config(base_config))),
    ):
        for instance in (INGEST, ALIGNER):
            await probe.wait_for(topics.status(instance), lambda s: s["state"] == "online")
        for step in range(STEPS):
            lo = step * 100
            vib = {"t0": int(vib_t[lo]) // 1000, "samples": vib_x[lo : lo + 100].tolist()}
            await probe.publish(f"{gw}/vib", vib, "json", qos=1)
            plc = {"ts": int(plc_t[step]) // MS, "data": {"pressure": float(plc_x[step])}}
            await probe.publish(f"{gw}/plc", plc, "json", qos=1)
            if step % 50 == 0:
                opc = {"ts": int(opc_t[step // 50]) // MS, "temp": float(opc_x[step // 50])}
                await probe.publish(f"{gw}/opc", opc, "json", qos=1)
        last = {"ts": int(opc_t[2]) // MS, "temp": float(opc_x[2])}
        await probe.publish(f"{gw}/opc", last, "json", qos=1)
        # The last sample every signal has passed: t0 + 9.9 s (the pressure's last reading
        # is at 9.93 s, so linear can bracket no later grid point).
        end = t0 + (STEPS - 1) * PERIOD
        await probe.wait_for(topics.samples("f"), lambda d: int(d["t"][-1]) >= end, timeout=60)
        [status] = await probe.wait_for(
            topics.status(INGEST),
            lambda s: s["health"]["ingest"]["readings"] == vib_t.size + STEPS + 3,
            timeout=30,
        )
    assert not probe.decoded(topics.errors(INGEST)), probe.decoded(topics.errors(INGEST))
    out = gathered(probe, topics)
    names = [f"vib/x:{a}" for a in AGGS] + ["p_linear", "p_hold", "temp_hold", "temp_linear"]
    assert out.features == names
    expected_t = t0 + np.arange(STEPS, dtype=np.int64) * PERIOD
    assert out.t.tolist() == expected_t.tolist()  # on k × period, once each, from t0
    assert (out.t % PERIOD == 0).all()
    col = {n: out.x[:, i] for i, n in enumerate(names)}
    state = {n: out.state[:, i] for i, n in enumerate(names)}
    age = {n: out.age_ms[:, i] for i, n in enumerate(names)}

    # 1 kHz: numpy over the same values in (t_k - period, t_k].
    for k, tk in enumerate(expected_t):
        window = vib_x[(vib_t > tk - PERIOD) & (vib_t <= tk)]
        assert col["vib/x:count"][k] == window.size
        if k == 0:  # only the reading at t0 itself
            assert window.size == 1
        want = {
            "mean": np.mean(window),
            "std": np.std(window),
            "rms": np.sqrt(np.mean(window**2)),
            "min": np.min(window),
            "max": np.max(window),
        }
        for agg, value in want.items():
            np.testing.assert_allclose(col[f"vib/x:{agg}"][k], value, rtol=1e-5, atol=1e-5)
    assert (state["vib/x:mean"] == FeatureState.OBSERVED).all()
    assert (col["vib/x:count"][1:] == 100).all()

    # 10 Hz: linear between the readings around t_k; hold the last one (30 ms before t_k + 100).
    linear = np.interp(expected_t[1:], plc_t, plc_x)
    np.testing.assert_allclose(col["p_linear"][1:], linear, rtol=1e-5, atol=1e-5)
    assert state["p_linear"][0] == FeatureState.MISSING  # nothing at or before t0
    assert np.isnan(col["p_linear"][0]) and np.isnan(col["p_hold"][0])
    assert (state["p_linear"][1:] == FeatureState.INTERPOLATED).all()
    np.testing.assert_allclose(age["p_linear"][1:], 100)  # the gap between the two readings
    held = hold(expected_t[1:], plc_t, plc_x)
    np.testing.assert_allclose(col["p_hold"][1:], held, rtol=1e-5, atol=1e-5)
    assert (state["p_hold"][1:] == FeatureState.HELD).all()
    np.testing.assert_allclose(age["p_hold"][1:], 70)

    # 0.2 Hz: held for 5 s (age growing), observed on its own reading; linear across the 5 s gap.
    np.testing.assert_array_equal(col["temp_hold"], hold(expected_t, opc_t, opc_x))
    assert state["temp_hold"][0] == state["temp_hold"][50] == FeatureState.OBSERVED
    assert (np.delete(state["temp_hold"], [0, 50]) == FeatureState.HELD).all()
    np.testing.assert_allclose(age["temp_hold"], (expected_t - hold(expected_t, opc_t, opc_t)) / MS)
    temp_linear = np.interp(expected_t, opc_t, opc_x)
    np.testing.assert_allclose(col["temp_linear"], temp_linear, rtol=1e-5)
    on_reading = np.isin(expected_t, opc_t)
    assert (state["temp_linear"][on_reading] == FeatureState.OBSERVED).all()
    assert (state["temp_linear"][~on_reading] == FeatureState.INTERPOLATED).all()
    assert status["health"]["ingest"]["readings"] == vib_t.size + STEPS + 3
