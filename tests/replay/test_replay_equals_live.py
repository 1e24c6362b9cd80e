"""Replay equals live: a live aligner and inference on the real broker, their raw input recorded
by `record --raw`; the replay of that recording through the same flow gives the same samples
and the same results, bit for bit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml

from edgefleet.flow import load_flow
from edgefleet.replay.record_raw import record_raw
from edgefleet.replay.recording import read_recording
from edgefleet.replay.run import replay
from services.aligner.config import AlignerConfig
from services.aligner.service import main as aligner_main
from services.inference.config import InferenceConfig
from services.inference.service import main as inference_main
from shared.config import validate
from shared.messages import ReadingBatch, ResultBatch, SampleBatch, now_ns
from shared.mqtt import BrokerSettings
from shared.topics import Kind, Topics
from tests.helpers import Probe, running
from tests.inference import models

FLOW = "pump"


def write_flow(tmp_path: Path) -> Path:
    model = onnx.load(models.linear(tmp_path / "m.onnx", f=3))
    onnx.helper.set_model_props(model, {"edgefleet.threshold": json.dumps(0.5)})
    models.save(model, tmp_path / "m.onnx")
    flow = {
        "name": FLOW,
        "align": {
            "period_ms": 100,
            "max_delay_ms": 300,
            "features": [
                {"signal": "fast/x", "agg": "mean"},
                {"signal": "fast/x", "agg": "max", "name": "x_max"},
                {"signal": "slow/y", "fill": "hold", "max_age_ms": 2000},
            ],
        },
        "model": {"path": "m.onnx", "outputs": {"score": "y[0]", "other": "y[1]"}},
    }
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(flow))
    return path


async def publish_plant(probe: Probe, topics: Topics, seconds: float) -> None:
    """A fast source (5 readings per 100 ms message, 50 Hz) and a slow one (2 Hz), paced as a
    device paces them: the sleeps are the data rate, not a wait for something."""
    rng = np.random.default_rng(7)
    for i in range(int(seconds * 10)):
        now = now_ns()
        t = now - np.arange(5)[::-1] * 20_000_000
        fast = ReadingBatch.from_columns("fast", ["x"], t, np.zeros(5), rng.normal(size=5))
        await probe.publish(topics.raw("fast"), fast.to_wire(), qos=1)
        if i == 20:  # a straggler: readings of samples the aligner emitted already (late)
            late = ReadingBatch.from_columns("fast", ["x"], [now - 700_000_000], [0], [99.0])
            await probe.publish(topics.raw("fast"), late.to_wire(), qos=1)
        if i % 5 == 0:
            slow = ReadingBatch.from_columns("slow", ["y"], [now], [0], [rng.normal()])
            await probe.publish(topics.raw("slow"), slow.to_wire(), qos=1)
        await asyncio.sleep(0.1)


async def test_replay_of_a_live_recording_gives_the_same_samples_and_results(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    topics = Topics(site)
    flow = load_flow(write_flow(tmp_path))
    aligner = validate(
        AlignerConfig,
        {
            **base_config,
            "instance": "aligner-pump",
            "flow": {"name": FLOW, "align": flow.align.model_dump(exclude_none=True)},
        },
        "test",
    )
    inference = validate(
        InferenceConfig,
        {**base_config, "instance": "inference-pump", **flow.inference_settings(), "watch_s": 0},
        "test",
    )
    await probe.subscribe(topics.samples(FLOW))
    await probe.subscribe(topics.results(FLOW))
    await probe.subscribe(topics.all_of(Kind.STATUS))
    rec_path = tmp_path / "raw.parquet"
    stop = asyncio.Event()
    settings = BrokerSettings(
        host=base_config["broker"]["host"], port=base_config["broker"]["port"]
    )
    async with running(aligner_main(aligner)), running(inference_main(inference)):
        for instance in ("aligner-pump", "inference-pump"):
            await probe.wait_for(topics.status(instance), lambda s: s["state"] == "online")
        recorder = asyncio.create_task(
            record_raw(
                rec_path,
                site=site,
                sources=["fast", "slow"],
                flow=FLOW,
                settings=settings,
                stop=stop,
            )
        )
        await asyncio.sleep(0.5)  # the recorder subscribes before data flows: a head start
        await publish_plant(probe, topics, seconds=4)
        # every published batch recorded, and the live aligner past its last deadline
        last_t = now_ns()
        await probe.wait_for(
            topics.results(FLOW), lambda r: int(r["t"][-1]) >= last_t - 300_000_000, timeout=20
        )
        stop.set()
        recorded = await recorder
    assert recorded.batches == 40 + 8 + 1 and recorded.rejected == 0

    live_samples = [SampleBatch.from_wire(d) for d in probe.decoded(topics.samples(FLOW))]
    live_results = [ResultBatch.from_wire(d) for d in probe.decoded(topics.results(FLOW))]
    replayed = replay(read_recording(rec_path), flow)

    def by_t(batches: list[Any], field: str) -> dict[int, Any]:
        return {int(t): row for b in batches for t, row in zip(b.t, getattr(b, field), strict=True)}

    live_x, replay_x = by_t(live_samples, "x"), by_t(replayed.samples, "x")
    live_state, replay_state = by_t(live_samples, "state"), by_t(replayed.samples, "state")
    assert len(live_x) >= 30
    assert set(live_x) <= set(replay_x)  # the replay also decides what live had not yet
    for t in live_x:
        np.testing.assert_array_equal(replay_x[t], live_x[t])  # bit for bit
        np.testing.assert_array_equal(replay_state[t], live_state[t])

    def scores(batches: list[ResultBatch]) -> dict[int, float]:
        return {
            int(t): float(s) for b in batches for t, s in zip(b.t, b.outputs["score"], strict=True)
        }

    live_scores, replay_scores = scores(live_results), scores(replayed.results)
    assert len(live_scores) >= 30 and set(live_scores) <= set(replay_scores)
    assert all(replay_scores[t] == live_scores[t] for t in live_scores)
