"""NaN model output: an inference instance serves a model whose output is NaN or infinite for
some inputs (ln x: NaN below 0, -inf at 0) while samples stream in, a few of each message poisoned.
Figures: NaN results delivered as valid (goal 0), those samples counted in the status and
reported on the errors topic, and every other sample with its result."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from faults.conftest import Figure, scaled
from tests.helpers import Probe
from tests.inference import models
from tests.inference.helpers import T0, samples
from tests.inference.live import INSTANCE, PERIOD_NS, results, serving, status_where

PER_MESSAGE = 4


async def test_results_that_are_not_numbers_never_reach_a_subscriber(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path, figure: Figure
) -> None:
    messages = scaled(500, least=10)
    model = models.log_of_inputs(tmp_path / "log.onnx")
    rng = np.random.default_rng(20)
    poisoned: set[int] = set()  # sample times whose result is not a number
    poisoned_messages = 0
    async with serving(base_config, probe, site, model) as topics:
        topic, errors = topics.results("f1"), topics.errors(INSTANCE)
        for m in range(messages):
            x = (np.abs(rng.normal(size=(PER_MESSAGE, len(models.FEATURES)))) + 0.1).astype(
                np.float32
            )
            t0 = T0 + m * PER_MESSAGE * PERIOD_NS
            if m % 3 == 0:  # every third message: one sample NaN out, one -inf out
                x[0, rng.integers(4)], x[2, rng.integers(4)] = -1.0, 0.0
                poisoned |= {t0, t0 + 2 * PERIOD_NS}
                poisoned_messages += 1
            await probe.publish(topics.samples("f1"), samples(x, t0=t0).to_wire())
            await asyncio.sleep(0.005)  # a stream, not one burst
        sent = messages * PER_MESSAGE
        state = await status_where(
            probe, topics, lambda s: s["samples"] == sent and s["nan_outputs"] == len(poisoned),
            timeout=60,
        )  # fmt: skip

        def reported() -> int:
            return sum(e["count"] for e in probe.decoded(errors) if "not a number" in e["reason"])

        # reports are rate-limited (the last come after the interval), and they count model
        # runs: messages that queued while a run went are one batch, so fewer may come
        with contextlib.suppress(TimeoutError):
            await probe.wait_until(lambda: reported() >= poisoned_messages, timeout=5)
    batches = results(probe, topic)
    times = np.concatenate([b.t for b in batches]) if batches else np.zeros(0, np.int64)
    delivered_nan = sum(
        int((~np.isfinite(np.asarray(v).reshape(len(b), -1))).any(axis=1).sum())
        for b in batches
        for v in b.outputs.values()
    )
    poisoned_delivered = len(poisoned & set(times.tolist()))
    missing = sent - len(poisoned) - len(set(times.tolist()))
    reasons = [e["reason"] for e in probe.decoded(errors) if "not a number" in e["reason"]]
    ok = delivered_nan == poisoned_delivered == missing == 0
    said = all("not published" in r and "'y'" in r for r in reasons)
    ok = ok and state["nan_outputs"] == len(poisoned) and reported() >= 1 and said
    figure(
        "NaN model output",
        f"a model giving NaN or -inf for some inputs (ln x) serves {sent:,} samples in "
        f"{messages} messages, {len(poisoned)} of them with a result that is not a number",
        f"NaN results delivered as valid {delivered_nan}; {state['nan_outputs']}/"
        f"{len(poisoned)} counted in the status (`nan_outputs`), {reported()}/"
        f"{poisoned_messages} messages' runs reported on the errors topic naming the output "
        f"({len(reasons)} reports, rate-limited); other samples without a result {missing}",
        ok,
    )
    assert ok, (delivered_nan, poisoned_delivered, missing, state["nan_outputs"], reasons[:2])
