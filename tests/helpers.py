"""Test helpers: a probe client on the real broker, and running services in-process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
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


class FreezableProxy:
    """A TCP proxy on loopback. `freeze()` stops forwarding in both directions (bytes and closes
    are held, every socket stays open), as a hung server process would; `thaw()` lets them on."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.flowing = asyncio.Event()  # client → server
        self.flowing.set()
        self.flowing_down = asyncio.Event()  # server → client
        self.flowing_down.set()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def freeze(self, *, downstream_only: bool = False) -> None:
        """Hold bytes in both directions, or (`downstream_only`) only what the server sends:
        the client's requests still reach it, nothing comes back, nothing closes."""
        self.flowing_down.clear()
        if not downstream_only:
            self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()
        self.flowing_down.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        for r, w, gate in (
            (reader, up_writer, self.flowing),
            (up_reader, writer, self.flowing_down),
        ):
            task = asyncio.create_task(self._pump(r, w, gate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                await gate.wait()  # frozen: hold the bytes, or the close
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
