"""The aligner service on a real mosquitto, fed adapter-shaped ReadingBatch messages."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edgefleet.cli import main as cli_main
from services.aligner.config import AlignerConfig
from services.aligner.service import main
from shared.codec import Encoding
from shared.config import load_config, validate
from shared.errors import ConfigError
from shared.messages import FeatureState, ReadingBatch, SampleBatch, now_ns
from shared.topics import Topics
from tests.helpers import Probe, running

MS = 1_000_000
S = 1_000_000_000
INSTANCE = "aligner-f"


def config(base: dict[str, Any], features: list[dict[str, Any]], **align: Any) -> AlignerConfig:
    flow = {
        "name": "f",
        "align": {
            "period_ms": 100,
            "max_delay_ms": 250,
            "on_missing": "nan",
            **align,
            "features": features,
        },
    }
    return validate(AlignerConfig, {**base, "instance": INSTANCE, "flow": flow}, "test")


def batch(
    source: str, signals: list[str], t: Any, sig: Any, value: Any, q: Any = None
) -> dict[str, Any]:
    return ReadingBatch.from_columns(source, signals, t, sig, value, q).to_wire()


async def start(probe: Probe, topics: Topics) -> None:
    await probe.subscribe(topics.everything())
    await probe.wait_for(topics.status(INSTANCE), lambda s: s["state"] == "online")


def samples(probe: Probe, topics: Topics) -> SampleBatch:
    got = [SampleBatch.from_wire(d) for d in probe.decoded(topics.samples("f"))]
    return SampleBatch(
        "f",
        got[0].features,
        np.concatenate([g.t for g in got]),
        np.concatenate([g.x for g in got]),
        np.concatenate([g.state for g in got]),
        np.concatenate([g.age_ms for g in got]),
    )


async def wait_until_t(probe: Probe, topics: Topics, t_ns: int, timeout: float = 10) -> None:
    await probe.wait_for(topics.samples("f"), lambda d: int(d["t"][-1]) >= t_ns, timeout)


async def test_fast_medium_and_slow_signals_give_the_grid(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    """1 kHz aggregated, 10 Hz interpolated, 0.2 Hz held: every 100 ms sample, exact values."""
    topics = Topics(site)
    features: list[dict[str, Any]] = [
        {"signal": "vib/x", "agg": "rms"},
        {"signal": "vib/x", "agg": "count"},
        {"signal": "plc/p", "fill": "linear", "max_age_ms": 200},
        {"signal": "opc/temp", "fill": "hold", "max_age_ms": 6000},
    ]
    # Deadlines far away: only early emission (every signal has moved past t_k) acts.
    cfg = config(base_config, features, max_delay_ms=60_000)
    t0 = (now_ns() // S - 20) * S
    async with running(main(cfg)):
        await start(probe, topics)
        for step in range(100):  # one adapter batch per source per 100 ms of device time
            lo = t0 + step * 100 * MS
            t_vib = lo + np.arange(100) * MS
            x = 2 * np.sin(2 * np.pi * 50 * (t_vib - t0) / S)
            await probe.publish(topics.raw("vib"), batch("vib", ["x"], t_vib, [0] * 100, x))
            t_plc = lo + 30 * MS
            await probe.publish(
                topics.raw("plc"), batch("plc", ["p"], [t_plc], [0], [(t_plc - t0) / S])
            )
            if step % 50 == 0:
                await probe.publish(
                    topics.raw("opc"), batch("opc", ["temp"], [lo], [0], [20 + step // 50])
                )
        await probe.publish(topics.raw("opc"), batch("opc", ["temp"], [t0 + 10 * S], [0], [22]))
        await wait_until_t(probe, topics, t0 + 9_900 * MS)
    out = samples(probe, topics)
    assert out.t.tolist() == [t0 + k * 100 * MS for k in range(100)]
    rms, count, p, temp = out.x.T
    np.testing.assert_allclose(rms[1:], math.sqrt(2), rtol=1e-5)
    assert count[0] == 1 and (count[1:] == 100).all()
    assert out.state[0, 2] == FeatureState.MISSING  # no pressure reading before t0 yet
    np.testing.assert_allclose(p[1:], (out.t[1:] - t0) / S, rtol=1e-5)
    assert (out.state[1:, 2] == FeatureState.INTERPOLATED).all()
    assert (temp[:50] == 20).all() and (temp[50:] == 21).all()
    assert out.state[0, 3] == out.state[50, 3] == FeatureState.OBSERVED
    assert out.state[1, 3] == FeatureState.HELD
    np.testing.assert_allclose(out.age_ms[49, 3], 4900)


async def test_source_restarted_mid_stream(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    """An adapter restarts: a gap, then it re-sends what it had (late or repeated readings)
    with its signals listed in another order. Samples go on, never twice, never revised."""
    topics = Topics(site)
    features: list[dict[str, Any]] = [
        {"signal": "plc/a", "fill": "hold", "max_age_ms": 300},
        {"signal": "plc/b", "agg": "last"},
    ]
    cfg = config(base_config, features, max_delay_ms=60_000)
    t0 = (now_ns() // S - 20) * S

    def plc(ms: range, names: list[str]) -> dict[str, Any]:
        t = np.repeat([t0 + m * MS for m in ms], 2)
        sig = np.tile([0, 1], len(ms))
        value = np.tile([1.0, 2.0], len(ms)) * np.repeat(list(ms), 2)
        if names[0] == "b":
            value = value.reshape(-1, 2)[:, ::-1].ravel()
        return batch("plc", names, t, sig, value)

    async with running(main(cfg)):
        await start(probe, topics)
        for lo in range(0, 3000, 100):  # before the restart: 0 .. 2.95 s every 50 ms
            await probe.publish(topics.raw("plc"), plc(range(lo, lo + 100, 50), ["a", "b"]))
        await wait_until_t(probe, topics, t0 + 2900 * MS)
        # restarted: it replays from 2.5 s, then a 1 s gap, then live from 4 s to 6 s
        await probe.publish(topics.raw("plc"), plc(range(2500, 3000, 50), ["b", "a"]))
        for lo in range(4000, 6000, 100):
            await probe.publish(topics.raw("plc"), plc(range(lo, lo + 100, 50), ["b", "a"]))
        await wait_until_t(probe, topics, t0 + 5900 * MS)
        [status] = await probe.wait_for(
            topics.status(INSTANCE), lambda s: s["health"]["aligner"]["duplicate"]
        )
    out = samples(probe, topics)
    assert out.t.tolist() == [t0 + k * 100 * MS for k in range(60)]  # once each, in order
    a, b = out.x.T
    ms = (out.t - t0) // MS
    present = (ms < 3000) | (ms >= 4000)
    np.testing.assert_array_equal(a[present], ms[present] - ms[present] % 50)
    np.testing.assert_array_equal(b[present], 2 * ms[present])
    gap = (ms >= 3300) & (ms < 4000)  # hold's max_age (300 ms) ran out during the gap
    assert (out.state[gap] == FeatureState.MISSING).all()
    # replayed: 9 timestamps x 2 signals at or before the last emitted sample (2.9 s) are late;
    # the 2 readings at 2.95 s were held already and change nothing
    assert status["health"]["aligner"]["late"] == 18
    assert status["health"]["aligner"]["duplicate"] == 2
    assert status["health"]["aligner"]["emit_delay_ms"]["p99"] < 1000
    reasons = [e["reason"] for e in probe.decoded(topics.errors(INSTANCE))]
    assert any("late readings dropped" in r for r in reasons)


async def test_signal_that_stops_goes_missing_and_returns(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    """Live timestamps: while b is silent the deadline (max_delay) emits the samples, b held
    until max_age and then missing; when b returns, so does its feature."""
    topics = Topics(site)
    features: list[dict[str, Any]] = [
        {"signal": "a/x", "fill": "hold", "max_age_ms": 300},
        {"signal": "b/y", "fill": "hold", "max_age_ms": 300},
    ]
    cfg = config(base_config, features, max_delay_ms=150)
    async with running(main(cfg)):
        await start(probe, topics)
        begin = now_ns()
        while (elapsed := now_ns() - begin) < 2_400 * MS:
            t = now_ns()
            await probe.publish(topics.raw("a"), batch("a", ["x"], [t], [0], [1.0]))
            if not 600 * MS <= elapsed < 1_600 * MS:
                await probe.publish(topics.raw("b"), batch("b", ["y"], [t], [0], [2.0]))
            await asyncio.sleep(0.05)  # the scenario: readings at 20 Hz, on the local clock
        await wait_until_t(probe, topics, t - 150 * MS)
    out = samples(probe, topics)
    rel = out.t - begin
    missing_b = out.state[:, 1] == FeatureState.MISSING
    assert not missing_b[(rel > 100 * MS) & (rel < 600 * MS)].any()
    assert missing_b[(rel > 1_000 * MS) & (rel < 1_550 * MS)].all()
    assert not missing_b[(rel > 1_750 * MS) & (rel < 2_300 * MS)].any()
    assert not (out.state[rel > 100 * MS, 0] == FeatureState.MISSING).any()
    assert np.diff(out.t).tolist() == [100 * MS] * (len(out.t) - 1)


async def test_malformed_and_mismatched_batches_go_to_errors(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    cfg = config(base_config, [{"signal": "plc/a", "agg": "mean"}], max_delay_ms=60_000)
    t0 = (now_ns() // S - 20) * S
    async with running(main(cfg)):
        await start(probe, topics)
        await probe.publish_raw(topics.raw("plc"), b"\xc1 not msgpack", qos=1)
        await probe.publish(topics.raw("plc"), batch("other", ["a"], [t0], [0], [1.0]), qos=1)
        wrong_index = batch("plc", ["a"], [t0], [0], [1.0])
        wrong_index["sig"] = np.array([3], np.uint16)
        await probe.publish(topics.raw("plc"), wrong_index, qos=1)
        await probe.publish(topics.raw("plc"), {"v": 9, "kind": "readings"}, qos=1)
        # ... and it goes on: good batches still give samples
        await probe.publish(
            topics.raw("plc"), batch("plc", ["a"], [t0, t0 + S], [0, 0], [1.0, 3.0]), qos=1
        )
        await wait_until_t(probe, topics, t0 + S)
        await probe.wait_for(topics.status(INSTANCE), lambda s: s["health"]["rejected"] >= 4)
    reasons = " | ".join(e["reason"] for e in probe.decoded(topics.errors(INSTANCE)))
    for expected in (
        "not valid msgpack",
        "names source 'other'",
        "signal index 3",
        "schema version 9",
    ):
        assert expected in reasons
    out = samples(probe, topics)
    assert out.x[0, 0] == 1.0 and out.x[-1, 0] == 3.0


async def test_samples_in_json_when_the_flow_says_so(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    """`align.encoding: json`: samples carry the JSON content type and decode like msgpack ones."""
    topics = Topics(site)
    feature = [{"signal": "plc/a", "agg": "mean"}]
    cfg = config(base_config, feature, max_delay_ms=60_000, encoding="json")
    t0 = (now_ns() // S - 20) * S
    async with running(main(cfg)):
        await start(probe, topics)
        await probe.publish(
            topics.raw("plc"), batch("plc", ["a"], [t0, t0 + S], [0, 0], [1.0, 3.0]), qos=1
        )
        await wait_until_t(probe, topics, t0 + S)
    messages = probe.received(topics.samples("f"))
    assert {m.content_type for m in messages} == {Encoding.JSON.content_type}
    json.loads(messages[0].payload)  # plain JSON, readable without the msgpack extension
    out = samples(probe, topics)
    assert out.x[0, 0] == 1.0 and out.x[-1, 0] == 3.0


def test_cli_checks_an_aligner_config(tmp_path: Path, capsys: Any) -> None:
    align = {
        "period_ms": 100,
        "max_delay_ms": 250,
        "features": [{"signal": "plc1/pressure", "fill": "linear", "max_age_ms": 500}],
    }
    cfg = tmp_path / "aligner.yaml"
    site = {"site": "s1", "instance": "aligner-pump"}
    cfg.write_text(yaml.safe_dump({**site, "flow": {"name": "pump", "align": align}}))
    assert cli_main(["run", "aligner", "--config", str(cfg), "--check"]) == 0
    bad = {**align, "perod_ms": 1}
    cfg.write_text(yaml.safe_dump({**site, "flow": {"name": "pump", "align": bad}}))
    assert cli_main(["run", "aligner", "--config", str(cfg), "--check"]) == 2
    assert "flow.align.perod_ms: unknown key" in capsys.readouterr().err


def test_a_flow_file_is_read_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    flow = tmp_path / "flows" / "pump.yaml"
    cfg = tmp_path / "aligner.yaml"
    cfg.write_text(yaml.safe_dump({"site": "s1", "instance": "a", "flow_file": "flows/pump.yaml"}))
    flow.write_text(
        "name: pump\nalign:\n  period_ms: 100\n  max_delay_ms: 250\n  features:\n"
        "    - {signal: plc1/p, fill: hold, max_age_ms: 500}\n"
    )
    assert load_config(cfg, AlignerConfig).flow_spec().align.sources == ["plc1"]
    flow.write_text(flow.read_text().replace(", max_age_ms: 500", ""))
    with pytest.raises(ConfigError) as err:
        load_config(cfg, AlignerConfig).flow_spec()
    assert "pump.yaml:6: align.features.0: feature 'plc1/p'" in str(err.value)
    assert "needs max_age_ms" in str(err.value)


async def test_a_source_whose_clock_runs_far_ahead_is_capped_and_reported(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    """b's clock is an hour ahead: its readings are not held (memory stays bounded), the
    source and its skew are reported, and a's samples keep flowing on time."""
    topics = Topics(site)
    features = [
        {"signal": "a/x", "fill": "hold", "max_age_ms": 300},
        {"signal": "b/y", "fill": "hold", "max_age_ms": 300},
    ]
    cfg = config(base_config, features, max_delay_ms=150)
    cfg = cfg.model_copy(update={"max_ahead_ms": 2_000.0})
    hour, per_batch, sent_b = 3600 * S, 200, 0
    async with running(main(cfg)):
        await start(probe, topics)
        begin = now_ns()
        while now_ns() - begin < 1_200 * MS:
            t = now_ns()
            await probe.publish(topics.raw("a"), batch("a", ["x"], [t], [0], [1.0]))
            t_b = t + hour + np.arange(per_batch) * MS
            await probe.publish(
                topics.raw("b"), batch("b", ["y"], t_b, [0] * per_batch, [2.0] * per_batch)
            )
            sent_b += per_batch
            await asyncio.sleep(0.05)
        await wait_until_t(probe, topics, t - 150 * MS)

        def counted(s: dict[str, Any]) -> bool:
            h = s["health"]["aligner"]
            return bool(h["ahead_by_source"].get("b") == sent_b)

        [status] = await probe.wait_for(topics.status(INSTANCE), counted)
        [report] = await probe.wait_for(
            topics.errors(INSTANCE), lambda e: "ahead of the local clock" in e["reason"]
        )
    health = status["health"]["aligner"]
    assert set(health["ahead_by_source"]) == {"b"} and health["ahead"] == sent_b
    assert abs(health["ahead_skew_ms"]["b"] - hour / MS) < 5_000  # about an hour, in ms
    assert health["held_readings"] < 50  # b's thousands are not held
    assert report["topic"] == topics.raw("b") and "from b" in report["reason"]
    out = samples(probe, topics)
    rel = out.t - begin
    steady = rel > 100 * MS
    assert not (out.state[steady, 0] == FeatureState.MISSING).any()  # a flows, on time
    assert (out.state[steady, 1] == FeatureState.MISSING).all()
    assert np.diff(out.t).tolist() == [100 * MS] * (len(out.t) - 1)
