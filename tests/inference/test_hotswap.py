"""Hot swap against a real mosquitto: under load, every sample time has exactly one result, from
the old model or the new; a candidate that cannot serve is refused and the live one goes on."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from shared.topics import Topics
from tests.helpers import Probe
from tests.inference import models
from tests.inference.live import (
    Feed,
    all_results,
    feeding,
    publish_config,
    results,
    serving,
    status_where,
)


def accounted(batches: list[Any], feed: Feed) -> tuple[np.ndarray[Any, Any], list[str]]:
    """Every sample time exactly once; the model sha of each result in sample-time order."""
    t = np.concatenate([b.t for b in batches])
    assert len(t) == len(np.unique(t)), "a sample has two results"
    np.testing.assert_array_equal(np.sort(t), feed.times())
    order = np.argsort(t, kind="stable")
    shas = np.concatenate([[b.model.sha256] * len(b) for b in batches])[order]
    arrival = np.concatenate([[i] * len(b) for i, b in enumerate(batches)])
    return arrival, list(shas)


async def new_results(probe: Probe, topics: Topics, state: dict[str, Any]) -> None:
    """Wait for a few results of the model the status says is live (the feed goes on)."""
    sha = state["model"]["sha256"]
    await probe.wait_for(topics.results("f1"), lambda b: b["model"]["sha256"] == sha, count=3)


async def test_config_swap_under_load_loses_nothing(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    old = models.linear(tmp_path / "old.onnx", seed=1)
    new = models.linear(tmp_path / "new.onnx", seed=7)
    async with serving(base_config, probe, site, old) as topics:
        feed = Feed(probe, topics)
        async with feeding(feed):
            await probe.wait_for(topics.results("f1"), count=3)  # results of the old model
            await publish_config(probe, topics, 1, model={"path": str(new)})
            state = await status_where(probe, topics, lambda s: s["swaps"]["done"] == 1)
            await new_results(probe, topics, state)
        await all_results(probe, topics, feed)
    batches = results(probe, topics.results("f1"))
    _, shas = accounted(batches, feed)
    first, last = shas[0], shas[-1]
    assert first != last and state["model"]["sha256"] == last
    # One switch, in sample order: old results, then new ones, never interleaved.
    assert shas == [first] * shas.count(first) + [last] * shas.count(last)
    assert state["revision"] == 1 and state["swaps"]["last"]["reason"] == "config revision 1"


async def test_file_replaced_on_disk_is_swapped(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    path = models.linear(tmp_path / "m.onnx", seed=1)
    async with serving(base_config, probe, site, path, watch_s=0.1) as topics:
        feed = Feed(probe, topics)
        async with feeding(feed):
            await probe.wait_for(topics.results("f1"), count=3)  # results of the old model
            # the watcher takes the loaded file as its baseline in two looks (watch_s 0.1), a
            # state nothing publishes: give it four
            await asyncio.sleep(0.4)
            staged = models.linear(tmp_path / "staged.onnx", seed=9)
            staged.replace(path)  # an atomic rename, as a deployment tool does it
            state = await status_where(probe, topics, lambda s: s["swaps"]["done"] == 1)
            await new_results(probe, topics, state)
        await all_results(probe, topics, feed)
    _, shas = accounted(results(probe, topics.results("f1")), feed)
    assert len(set(shas)) == 2 and "changed" in state["swaps"]["last"]["reason"]


async def refused_while_live_serves(
    base_config: dict[str, Any],
    probe: Probe,
    site: str,
    live: Path,
    candidates: list[Path],
    timeout_s: float,
) -> list[str]:
    """Offer each candidate in turn; every one refused, every sample served by the live model.
    Returns the reasons reported on the errors topic."""
    async with serving(base_config, probe, site, live, candidate_timeout_s=timeout_s) as topics:
        feed = Feed(probe, topics)
        async with feeding(feed):
            errors = topics.errors("inference-f1")
            for revision, path in enumerate(candidates, start=1):
                await publish_config(probe, topics, revision, model={"path": str(path)})
                await status_where(probe, topics, lambda s, r=revision: s["revision"] == r)
                # each report before the next candidate: refusals within the error channel's
                # interval would travel as one report with a count, and one reason
                await probe.wait_for(errors, lambda e: "refused" in e["reason"], count=revision)
            n = len(candidates)
            state = await status_where(probe, topics, lambda s: s["swaps"]["refused"] == n)
        await all_results(probe, topics, feed)
    _, shas = accounted(results(probe, topics.results("f1")), feed)
    assert set(shas) == {state["model"]["sha256"]} and state["swaps"]["done"] == 0
    reasons = [e["reason"] for e in probe.decoded(topics.errors("inference-f1"))]
    assert sum("refused, the live model keeps serving" in r for r in reasons) == n
    return reasons


async def test_unfit_candidates_are_refused_and_the_live_model_serves(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    live = models.isolation_forest(tmp_path / "live.onnx")
    good = models.linear(tmp_path / "good.onnx").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(bytes(b ^ 0x5A for b in good))
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    wrong = models.linear(tmp_path / "three.onnx", f=3)  # takes 3 features, the flow sends 4
    candidates = [truncated, corrupt, text, wrong, tmp_path / "missing.onnx"]
    # A generous trial timeout: on a loaded machine a trial process that must only say "unfit"
    # can take seconds to start onnxruntime; the hanging candidate has a test of its own.
    reasons = await refused_while_live_serves(
        base_config, probe, site, live, candidates, timeout_s=60
    )
    text_of = " | ".join(reasons)
    for needle in ("not a valid ONNX model", "takes 3 features", "cannot read model file"):
        assert needle in text_of, needle


async def test_a_candidate_that_hangs_is_refused_and_the_live_model_serves(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    live = models.isolation_forest(tmp_path / "live.onnx")
    hangs = models.hanging(tmp_path / "hangs.onnx")
    reasons = await refused_while_live_serves(base_config, probe, site, live, [hangs], timeout_s=3)
    assert any("did not finish" in r for r in reasons), reasons


PATH = [os.environ.get("PYTHONPATH", "")]

# Installed in the trial process only (through PYTHONPATH): onnxruntime there dies by SIGSEGV on
# opening a model that carries the marker, as it has done on malformed files. The service's own
# process is untouched: it imported onnxruntime long before.
SEGFAULT_HOOK = """
import os, signal, sys
if "services.inference.isolated" in sys.orig_argv:
    import onnxruntime
    _init = onnxruntime.InferenceSession.__init__
    def _crash(self, model, *args, **kwargs):
        if isinstance(model, bytes) and b"segfault-in-onnxruntime" in model:
            os.kill(os.getpid(), signal.SIGSEGV)
        _init(self, model, *args, **kwargs)
    onnxruntime.InferenceSession.__init__ = _crash
"""


async def test_a_candidate_that_crashes_the_trial_process_is_refused_live_serves(
    base_config: dict[str, Any],
    probe: Probe,
    site: str,
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SEGFAULT_HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hooks), *PATH])))
    live = models.isolation_forest(tmp_path / "live.onnx")
    crashing = models.linear(tmp_path / "crashing.onnx")
    model = onnx.load(str(crashing))
    onnx.helper.set_model_props(model, {"edgefleet.note": "segfault-in-onnxruntime"})
    models.save(model, crashing)
    async with serving(base_config, probe, site, live, candidate_timeout_s=20) as topics:
        feed = Feed(probe, topics)
        async with feeding(feed):
            await publish_config(probe, topics, 1, model={"path": str(crashing)})
            state = await status_where(probe, topics, lambda s: s["swaps"]["refused"] == 1)
        await all_results(probe, topics, feed)
    assert "killed by SIGSEGV" in state["swaps"]["last_error"]
    assert state["swaps"]["done"] == 0 and state["revision"] == 1
    _, shas = accounted(results(probe, topics.results("f1")), feed)
    assert set(shas) == {state["model"]["sha256"]}  # every sample served by the live model
    reasons = [e["reason"] for e in probe.decoded(topics.errors("inference-f1"))]
    assert any("crashed the process that tried it" in r and "SIGSEGV" in r for r in reasons)
