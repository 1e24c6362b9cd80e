"""A running inference instance under a stream of samples: the swap, shadow and health tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from services.inference.config import InferenceConfig
from services.inference.service import main
from shared import codec
from shared.config import validate
from shared.messages import ConfigUpdate, ResultBatch
from shared.topics import Topics
from tests.helpers import Probe, running
from tests.inference import models
from tests.inference.helpers import T0, samples

INSTANCE = "inference-f1"
PERIOD_NS = 100_000_000  # sample period of the stream: t steps by this


def config(base: dict[str, Any], model: Path, **kw: Any) -> InferenceConfig:
    data = {
        **base,
        "instance": INSTANCE,
        "flow": "f1",
        "model": {"path": str(model)},
        "features": models.FEATURES,
        **kw,
    }
    return validate(InferenceConfig, data, "test")


class Feed:
    """Publishes `per_message` samples every `every_s` with consecutive sample times."""

    def __init__(
        self,
        probe: Probe,
        topics: Topics,
        per_message: int = 4,
        every_s: float = 0.01,
        shift: np.ndarray[Any, Any] | None = None,
    ) -> None:
        self.probe, self.topics = probe, topics
        self.per_message, self.every_s = per_message, every_s
        self.sent = 0
        self.shift = shift
        self.rng = np.random.default_rng(5)

    async def send(self, n: int | None = None) -> None:
        n = n or self.per_message
        x = self.rng.normal(size=(n, len(models.FEATURES))).astype(np.float32)
        if self.shift is not None:
            x += self.shift
        batch = samples(x, t0=T0 + self.sent * PERIOD_NS)
        await self.probe.publish(self.topics.samples("f1"), batch.to_wire())
        self.sent += n  # after: a feed cancelled mid-publish must not count what it never sent

    async def run(self) -> None:
        while True:
            await self.send()
            await asyncio.sleep(self.every_s)  # the scenario: a steady stream of samples

    def times(self) -> np.ndarray[Any, Any]:
        return T0 + np.arange(self.sent, dtype=np.int64) * PERIOD_NS


@contextlib.asynccontextmanager
async def feeding(feed: Feed) -> AsyncIterator[Feed]:
    task = asyncio.create_task(feed.run())
    try:
        yield feed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def serving(
    base: dict[str, Any], probe: Probe, site: str, model: Path, **kw: Any
) -> AsyncIterator[Topics]:
    topics = Topics(site)
    await probe.subscribe(topics.everything())
    async with running(main(config(base, model, **kw))):
        await probe.wait_for(topics.status(INSTANCE), lambda s: s["state"] == "online")
        yield topics


async def publish_config(probe: Probe, topics: Topics, revision: int, **keys: Any) -> None:
    update = ConfigUpdate(instance=INSTANCE, revision=revision, config=keys)
    await probe.publish(topics.config(INSTANCE), update.to_wire(), qos=1, retain=True)


async def status_where(probe: Probe, topics: Topics, predicate: Any, timeout: float = 30) -> Any:
    """The first status whose inference section satisfies `predicate`."""

    def ok(s: dict[str, Any]) -> bool:
        section = s.get("health", {}).get("inference")
        return section is not None and bool(predicate(section))

    [status] = (await probe.wait_for(topics.status(INSTANCE), ok, timeout=timeout))[:1]
    return status["health"]["inference"]


def results(probe: Probe, topic: str) -> list[ResultBatch]:
    return [ResultBatch.from_wire(w) for w in probe.decoded(topic)]


async def all_results(probe: Probe, topics: Topics, feed: Feed, timeout: float = 20) -> None:
    """Wait until every sample sent has a result (or as many as were sent)."""
    want = feed.sent
    topic = topics.results("f1")
    counted = [0, 0]  # messages decoded so far, results in them: each message decoded once

    def done() -> bool:
        messages = probe.received(topic)
        for m in messages[counted[0] :]:
            counted[1] += len(codec.decode(m.payload, m.content_type)["t"])
        counted[0] = len(messages)
        return counted[1] >= want

    try:
        await probe.wait_until(done, timeout=timeout)
    except TimeoutError:
        got = sum(len(w["t"]) for w in probe.decoded(topic))
        raise AssertionError(f"{got} results for {want} samples sent") from None
