"""Model health in the status: drift against the model's train_stats when an input shifts, the
output distribution over the window, latency, and rejected samples; plus the ring buffers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from services.inference.health import Ring
from tests.helpers import Probe
from tests.inference import models
from tests.inference.helpers import samples
from tests.inference.live import Feed, all_results, results, serving, status_where

WINDOW = 64
PSI_WINDOW = 256


@given(st.integers(1, 40), st.lists(st.integers(0, 30), max_size=12))
def test_ring_holds_the_last_rows(size: int, chunks: list[int]) -> None:
    ring, stream, k = Ring(size), [], 0
    for n in chunks:
        rows = np.arange(k, k + n, dtype=np.float64)
        k += n
        ring.extend(rows)
        stream.extend(rows.tolist())
    assert sorted(ring.values().tolist()) == stream[-size:] if stream else ring.count == 0


async def test_drift_outputs_and_rejections_in_the_status(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    model = models.isolation_forest(tmp_path / "if.onnx")  # carries train_stats (mean, std)
    shift = np.array([3.0, 0.0, 0.0, 0.0], np.float32)  # pressure moves by ~3 training stds
    async with serving(base_config, probe, site, model, health_window=WINDOW) as topics:
        feed = Feed(probe, topics, per_message=16)
        for _ in range(WINDOW // 16):
            await feed.send()
        await all_results(probe, topics, feed)
        calm = await status_where(probe, topics, lambda s: s["results"] == feed.sent)
        feed.shift = shift
        for _ in range(WINDOW // 16):
            await feed.send()
        bad = samples(np.full((2, 4), np.nan, np.float32), t0=1)
        await probe.publish(topics.samples("f1"), bad.to_wire())
        await probe.publish_raw(topics.samples("f1"), b"\x00junk")
        await all_results(probe, topics, feed)
        state = await status_where(
            probe, topics, lambda s: s["results"] == feed.sent and s["skipped_nan"] == 2
        )
    before, after = calm["model"]["health"], state["model"]["health"]
    assert max(before["drift"].values()) < 0.6  # the training distribution: no drift
    assert after["drift"]["pressure"] > 2.5 and after["drift_max"] == after["drift"]["pressure"]
    assert max(after["drift"][f] for f in ("temp", "vib_rms", "flow")) < 0.6
    assert abs(after["inputs"]["pressure"]["mean"] - 3) < 0.5
    # The output distribution over the window: the last WINDOW results.
    batches = results(probe, topics.results("f1"))
    t = np.concatenate([b.t for b in batches])
    scores = np.concatenate([b.outputs["scores"] for b in batches])[np.argsort(t)][-WINDOW:]
    out = after["outputs"]["scores"]
    assert abs(out["mean"] - float(np.mean(scores))) < 1e-5
    assert abs(out["p50"] - float(np.percentile(scores, 50))) < 1e-3
    assert abs(out["p95"] - float(np.percentile(scores, 95))) < 1e-3
    assert after["rejected"] == {
        "malformed_messages": 1,
        "skipped_nan": 2,
        "nan_outputs": 0,
        "failed_samples": 0,
    }
    assert after["run_us"]["p50"] > 0 and after["latency_us"]["p90"] >= after["latency_us"]["p50"]
    assert after["window_samples"] == WINDOW


async def test_an_input_that_oscillates_around_its_mean_shows_psi_not_mean_drift(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    model = models.isolation_forest(tmp_path / "if.onnx")  # train_stats with deciles
    # PSI over ten bins needs a few hundred samples to settle (64 give ~0.1-0.5 on calm data)
    async with serving(base_config, probe, site, model, health_window=PSI_WINDOW) as topics:
        feed = Feed(probe, topics, per_message=16)
        for _ in range(PSI_WINDOW // 16):
            await feed.send()
        await all_results(probe, topics, feed)
        calm = await status_where(probe, topics, lambda s: s["results"] == feed.sent)
        # pressure swings ±2 training stds around the training mean: same mean, other spread
        rng = np.random.default_rng(8)
        for k in range(PSI_WINDOW // 16):
            x = rng.normal(size=(16, 4)).astype(np.float32)
            x[:, 0] = np.where(np.arange(16) % 2 == 0, 2.0, -2.0)
            t0 = samples(x).t[0] + (feed.sent + k * 16) * 100_000_000
            await probe.publish(topics.samples("f1"), samples(x, t0=int(t0)).to_wire())
        feed.sent += PSI_WINDOW
        await all_results(probe, topics, feed)
        state = await status_where(probe, topics, lambda s: s["results"] == feed.sent)
    before, after = calm["model"]["health"], state["model"]["health"]
    assert before["psi_max"] is not None and before["psi_max"] < 0.25  # the training distribution
    assert after["drift"]["pressure"] < 0.3  # the mean did not move ...
    assert after["psi"]["pressure"] > 2.0  # ... but every value sits in the outer deciles
    assert after["psi_max"] == after["psi"]["pressure"]
    assert after["inputs"]["pressure"]["psi"] == after["psi"]["pressure"]
    assert max(after["psi"][f] for f in ("temp", "vib_rms", "flow")) < 0.25
