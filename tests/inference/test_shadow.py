"""Shadow models against a real mosquitto: the candidate runs on the same samples, its results go
to `shadow/{flow}`, the status's agreement figures match the two topics; promote and drop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet import cli
from tests.helpers import Probe
from tests.inference import models
from tests.inference.live import (
    INSTANCE,
    Feed,
    all_results,
    publish_config,
    results,
    serving,
    status_where,
)


def joined(live: list[Any], shadow: list[Any], field: str) -> tuple[Any, Any]:
    """The field of both models for the sample times both produced, in time order."""

    def by_time(batches: list[Any]) -> tuple[Any, Any]:
        t = np.concatenate([b.t for b in batches])
        v = np.concatenate([b.outputs[field] for b in batches])
        return t, v

    lt, lv = by_time(live)
    st, sv = by_time(shadow)
    _, li, si = np.intersect1d(lt, st, return_indices=True)
    return lv[li], sv[si]


async def test_agreement_figures_match_the_topics(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    live = models.isolation_forest(tmp_path / "live.onnx", seed=0)
    candidate = models.isolation_forest(tmp_path / "candidate.onnx", seed=3)
    shadow = {"path": str(candidate)}
    async with serving(base_config, probe, site, live, shadow=shadow) as topics:
        await status_where(probe, topics, lambda s: s["shadow"] is not None)
        feed = Feed(probe, topics, per_message=8)
        for _ in range(40):
            await feed.send()
        await all_results(probe, topics, feed)
        state = await status_where(
            probe,
            topics,
            lambda s: ((s["shadow"] or {}).get("agreement") or {}).get("compared") == feed.sent,
        )
    live_results = results(probe, topics.results("f1"))
    shadow_results = results(probe, topics.shadow("f1"))
    assert {r.model.name for r in shadow_results} == {"candidate"}
    assert sum(len(r) for r in shadow_results) == feed.sent == 320
    agreement = state["shadow"]["agreement"]
    assert agreement["label"] == "label" and agreement["score"] == "scores"
    a, b = joined(live_results, shadow_results, "label")
    assert agreement["label_agreement"] == round(float(np.mean(a == b)), 6)
    assert 0.5 < agreement["label_agreement"] < 1.0  # two forests: mostly, not always, agree
    assert agreement["decisions_differ"] == int(np.sum(a != b)) > 0
    a, b = joined(live_results, shadow_results, "scores")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    for q in (50, 90, 99):
        assert abs(agreement["score_diff"][f"p{q}"] - np.percentile(diff, q)) < 1e-3
    x, y = a.reshape(len(a), -1)[:, 0], b.reshape(len(b), -1)[:, 0]
    assert abs(agreement["score_corr"] - np.corrcoef(x, y)[0, 1]) < 1e-4
    assert agreement["score_sums"]["n"] == len(x)
    assert state["shadow"]["skipped_batches"] == 0
    for side in (state["model"], state["shadow"]):
        assert side["health"]["run_us"]["p50"] > 0 and side["health"]["latency_us"]["p99"] > 0


async def test_promote_and_drop_are_one_command_each(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    live = models.isolation_forest(tmp_path / "live.onnx", seed=0)
    candidate = models.isolation_forest(tmp_path / "candidate.onnx", seed=3)
    other = models.isolation_forest(tmp_path / "other.onnx", seed=4)
    broker = base_config["broker"]
    args = [
        "--site",
        site,
        "--instance",
        INSTANCE,
        "--host",
        broker["host"],
        "--port",
        str(broker["port"]),
        "--wait",
        "30",
    ]
    async with serving(base_config, probe, site, live) as topics:
        feed = Feed(probe, topics)
        await feed.send()
        await publish_config(probe, topics, 1, shadow={"path": str(candidate)})
        before = await status_where(probe, topics, lambda s: s["shadow"] is not None)
        assert await asyncio.to_thread(cli.main, ["shadow", "promote", *args]) == 0
        after = await status_where(probe, topics, lambda s: s["revision"] == 2)
        assert after["model"]["sha256"] == before["shadow"]["sha256"] and after["shadow"] is None

        await publish_config(probe, topics, 3, shadow={"path": str(other)})
        await status_where(probe, topics, lambda s: s["shadow"] is not None)
        assert await asyncio.to_thread(cli.main, ["shadow", "drop", *args]) == 0
        dropped = await status_where(probe, topics, lambda s: s["revision"] == 4)
        await feed.send()
        await all_results(probe, topics, feed)
    assert dropped["shadow"] is None and dropped["model"]["sha256"] == after["model"]["sha256"]
    retained = probe.decoded(topics.config(INSTANCE))[-1]
    assert retained["revision"] == 4 and retained["config"]["shadow"] is None


async def test_a_slow_shadow_never_holds_up_the_live_results(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    """A candidate that takes ~0.4 s a batch: every live result still comes at the pace of the
    samples (run on the live loop, 200 batches would take 80 s), the candidate sees what it
    can, and what it could not see is counted, not queued without bound."""
    live = models.mlp(tmp_path / "live.onnx")
    slow = models.slow(tmp_path / "slow.onnx", 3 * 10**5)
    kw = {"max_batch": 4, "settle_passes": 0}  # one message, one batch: 200 shadow jobs
    async with serving(base_config, probe, site, live, shadow={"path": str(slow)}, **kw) as topics:
        await status_where(probe, topics, lambda s: s["shadow"] is not None)
        feed = Feed(probe, topics, per_message=4)
        for _ in range(200):
            await feed.send()
            await asyncio.sleep(0.005)  # the scenario: a steady stream of samples
        await all_results(probe, topics, feed, timeout=60)
        shadow_batches = len(probe.received(topics.shadow("f1")))
        assert shadow_batches < 50, shadow_batches  # the candidate is still far behind
        state = await status_where(
            probe, topics, lambda s: (s["shadow"] or {}).get("skipped_batches", 0) > 0
        )
    assert state["shadow"]["skipped_batches"] <= 200 - 64  # the queue holds 64 batches
