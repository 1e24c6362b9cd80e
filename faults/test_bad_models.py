"""Bad models: truncated, corrupt, not ONNX at all, a wrong input shape, a missing file and one
that kills the process loading it (SIGSEGV in onnxruntime), each offered to a serving inference
instance as a hot swap (a newer retained config), round after round, while samples stream in.
Figures: activations (goal 0), refusals with a reason that says what is wrong, samples without a
result (goal 0), and the longest gap between two results while candidates were tried, beside the
longest gap of an equal stretch before (live downtime)."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import time
from pathlib import Path
from typing import Any

import onnx
import pytest

from edgefleet.broker import LocalBroker
from faults.conftest import Figure, scaled
from tests.helpers import Probe, until
from tests.inference import models
from tests.inference.live import (
    INSTANCE,
    Feed,
    all_results,
    feeding,
    publish_config,
    results,
    serving,
    status_where,
)
from tests.inference.test_hotswap import SEGFAULT_HOOK, accounted

# what each kind of bad model must be refused with (a person reads this)
BASELINE = 200  # result messages of steady serving before the first offer
REASONS = {
    "truncated": "not a valid ONNX model",
    "corrupt": "not a valid ONNX model",
    "text": "not a valid ONNX model (a text file)",
    "wrong shape": "takes 3 features",
    "missing": "cannot read model file",
    "crash on load": "killed by SIGSEGV",
}


def bad_models(root: Path) -> dict[str, Path]:
    good = models.linear(root / "good.onnx").read_bytes()
    out = {k: root / f"{k.replace(' ', '_')}.onnx" for k in REASONS}
    out["truncated"].write_bytes(good[: len(good) // 2])
    out["corrupt"].write_bytes(bytes(b ^ 0x5A for b in good))
    out["text"].write_text("this is not a model\n")
    models.linear(out["wrong shape"], f=3)  # the flow sends 4 features
    # the marker SEGFAULT_HOOK's onnxruntime dies on, in the trial process only
    crashing = onnx.load(str(models.linear(out["crash on load"])))
    onnx.helper.set_model_props(crashing, {"edgefleet.note": "segfault-in-onnxruntime"})
    models.save(crashing, out["crash on load"])
    return out  # "missing" is never written


async def arrivals(port: int, topic: str, out: Path) -> asyncio.subprocess.Process:
    """mosquitto_sub writing the arrival time of each message (`%U`, wall clock, ns) to `out`:
    a C client in its own process, so the gaps it sees are the service's, not the test's."""
    with out.open("wb") as sink:
        return await asyncio.create_subprocess_exec(
            *["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-F", "%U"],
            stdout=sink,
        )


def read_times(out: Path) -> list[float]:
    return [float(line) for line in out.read_text().split()]


def longest_wait(results: list[float], samples: list[float], start: float, end: float) -> float:
    """The longest time between a sample's arrival at the broker and the next result, over
    `[start, end]`: how long the live model kept a sample waiting (a gap in the feed is not one)."""
    out = 0.0
    for a, b in itertools.pairwise(t for t in results if start <= t <= end):
        i = bisect.bisect_right(samples, a)
        if i < len(samples) and samples[i] < b:
            out = max(out, b - samples[i])
    return out


async def test_bad_models_are_refused_and_the_live_model_never_stops(
    base_config: dict[str, Any],
    broker: LocalBroker,
    probe: Probe,
    site: str,
    tmp_path: Path,
    figure: Figure,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rounds = scaled(10)
    # the trial process of each candidate inherits this environment: the crash hook loads there
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SEGFAULT_HOOK)
    inherited = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hooks), inherited])))
    live = models.isolation_forest(tmp_path / "live.onnx")
    candidates = bad_models(tmp_path)
    offers = [(kind, path) for _ in range(rounds) for kind, path in candidates.items()]
    out, fed = tmp_path / "results.txt", tmp_path / "samples.txt"
    async with serving(base_config, probe, site, live, candidate_timeout_s=60) as topics:
        topic, errors = topics.results("f1"), topics.errors(INSTANCE)
        watch = await arrivals(broker.port, topic, out)
        watch_fed = await arrivals(broker.port, topics.samples("f1"), fed)
        feed = Feed(probe, topics)
        async with feeding(feed):
            # a stretch of steady serving first, to compare the gaps with
            await until(lambda: len(read_times(out)) >= BASELINE, timeout=60)
            t0 = time.time()
            for revision, (_kind, path) in enumerate(offers, start=1):
                await publish_config(probe, topics, revision, model={"path": str(path)})
                await status_where(probe, topics, lambda s, r=revision: s["revision"] == r)
                # each report before the next offer: the error channel would merge a burst
                await probe.wait_for(errors, lambda e: "refused" in e["reason"], count=revision)
            t1 = time.time()
            state = await status_where(
                probe, topics, lambda s: s["swaps"]["refused"] == len(offers)
            )
            # as long a stretch again with no offer (a measuring window, capped): the waits
            # the loaded machine alone causes, to read the figure against
            after = min(t1 - t0, 30.0)
            await asyncio.sleep(after)
            t2 = t1 + after
        await all_results(probe, topics, feed, timeout=60)
        for process in (watch, watch_fed):
            process.terminate()
            await process.wait()
    times, sample_times = read_times(out), read_times(fed)
    batches = results(probe, topic)
    _, shas = accounted(batches, feed)  # every sample once (it raises otherwise)
    activations = state["swaps"]["done"] + len(set(shas) - {state["model"]["sha256"]})
    reasons = [e["reason"] for e in probe.decoded(errors) if "refused" in e["reason"]]
    clear = sum(REASONS[kind] in reason for (kind, _), reason in zip(offers, reasons, strict=True))
    start = times[0] if times else t0
    during = longest_wait(times, sample_times, t0, t1)
    quiet = max(
        longest_wait(times, sample_times, start, t0), longest_wait(times, sample_times, t1, t2)
    )
    ok = activations == 0 and clear == len(offers) and len(reasons) == len(offers)
    figure(
        "bad model",
        f"{len(offers)} hot swaps offered ({rounds} rounds of truncated, corrupt, not ONNX, "
        f"wrong input shape, missing file, crash on load) while {feed.sent:,} samples streamed",
        f"activations {activations}; {clear}/{len(offers)} refused with the reason that names "
        f"the fault; samples without a result 0; longest wait of a sample for a result while "
        f"offers were tried {during:.2f} s over {t1 - t0:.0f} s (with no offer, before and "
        f"after: {quiet:.2f} s over {t0 - start + after:.0f} s)",
        ok,
    )
    assert ok, (activations, clear, reasons[:3])
