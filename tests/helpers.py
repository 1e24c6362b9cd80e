"""Test helpers: a probe client on the real broker, and running services in-process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Self

from shared import codec
from shared.clock import Clock, ManualClock
from shared.messages import WriteRequest
from shared.mqtt import BrokerSettings, MqttConnection, PublishResult, Received
from shared.topics import matches


class Probe:
    """A plain MQTT client for tests: publish, and wait for messages matching a filter."""

    def __init__(self, host: str, port: int, **settings: Any) -> None:
        self.messages: list[Received] = []
        self.arrived_ns: list[int] = []  # local clock at each message's arrival, for latencies
        self._arrived = asyncio.Condition()
        self.connection = MqttConnection(
            BrokerSettings(
                host=host, port=port, reconnect_initial_s=0.05, reconnect_max_s=0.5, **settings
            ),
            self._on_message,
        )
        self._task: asyncio.Task[None] | None = None

    async def _on_message(self, message: Received) -> None:
        async with self._arrived:
            self.messages.append(message)
            self.arrived_ns.append(time.time_ns())
            self._arrived.notify_all()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.connection.run())
        await asyncio.wait_for(self.connection.wait_connected(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        await self.connection.subscribe(topic_filter, qos)

    async def publish(
        self, topic: str, body: Any, encoding: str = "msgpack", **kw: Any
    ) -> PublishResult:
        payload, content_type = codec.encode(body, encoding)
        return await self.connection.publish(topic, payload, content_type=content_type, **kw)

    async def write_request(
        self, topic: str, request_id: str, target: dict[str, Any], value: Any, reply: str
    ) -> PublishResult:
        """A WriteRequest as the actuator sends it: response topic and correlation data."""
        body = WriteRequest.model_validate(
            {"request_id": request_id, "target": target, "value": value}
        )
        return await self.publish(
            topic,
            body.to_wire(),
            qos=1,
            response_topic=reply,
            correlation_data=request_id.encode(),
        )

    async def publish_raw(self, topic: str, payload: bytes, **kw: Any) -> PublishResult:
        return await self.connection.publish(topic, payload, **kw)

    def received(self, topic_filter: str) -> list[Received]:
        return [m for m in self.messages if matches(m.topic, topic_filter)]

    def decoded(self, topic_filter: str) -> list[Any]:
        return [codec.decode(m.payload, m.content_type) for m in self.received(topic_filter)]

    async def wait_for(
        self,
        topic_filter: str,
        predicate: Callable[[Any], bool] = lambda _: True,
        timeout: float = 10.0,
        count: int = 1,
    ) -> list[Any]:
        """Wait until `count` decoded messages on `topic_filter` satisfy `predicate`; return
        the first `count` of them."""

        def found() -> list[Any]:
            return [d for d in self.decoded(topic_filter) if predicate(d)]

        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(found()) >= count)
        return found()[:count]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `condition()` holds, checked once per message that arrives (and now)."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(condition)


async def until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Wait until `predicate()` is true, checking every `interval` seconds; fail after `timeout`.

    For state that announces no event (a simulator's values, a server's callbacks); where a
    message on the broker tells the same, wait for it with `Probe.wait_for` instead."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (no event to await: that is this helper's case)
            await asyncio.sleep(interval)


def manual(clock: Clock) -> ManualClock:
    """`clock` as the ManualClock a test gave the simulator."""
    assert isinstance(clock, ManualClock)
    return clock


@contextlib.asynccontextmanager
async def running(main: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run a service's `main(config)` as a task for the block, then cancel it."""
    task = asyncio.create_task(main)
    try:
        yield task
    finally:
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        error = results[0]
        if isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError):
            raise error
