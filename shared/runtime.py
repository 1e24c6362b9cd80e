"""The service runtime every edgefleet service runs on.

Skeleton: validated config → `async with Runtime(...)` → `await rt.serve(*loops)`: one
TaskGroup of named loops beside the MQTT and status loops, until SIGTERM/SIGINT sets the stop
event; then service loops stop first, `stopped` is published, and the connection closes.

It owns the retained status (`online` with periodic health, `stopped` on a clean exit, the last
will `offline`), the errors topic, and the counters a user looks at when something is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import psutil

from shared import codec
from shared.codec import Encoding
from shared.config import ServiceConfig
from shared.errors import PayloadError
from shared.messages import ConfigUpdate, ErrorReport, Message, Status, now_ns
from shared.mqtt import MqttConnection, PublishResult, Received, Will
from shared.topics import Topics, matches

log = logging.getLogger(__name__)

Handler = Callable[[Received], Awaitable[None]]
ConfigCallback = Callable[[dict[str, Any], int], Awaitable[None]]
Loop = Callable[[], Coroutine[Any, Any, None]]
EXCERPT_BYTES = 120
SKEW_WINDOW = 64


@dataclass
class Health:
    """Counters every service reports in its status."""

    started_ns: int = field(default_factory=now_ns)
    received: int = 0
    published: int = 0
    rejected: int = 0
    errors: int = 0
    skew_ns: dict[str, deque[int]] = field(default_factory=dict)

    def note_clock(self, source: str, device_ns: int, local_ns: int) -> None:
        """Remember how far a device's clock is ahead (+) of ours, for the status."""
        window = self.skew_ns.setdefault(source, deque(maxlen=SKEW_WINDOW))
        window.append(device_ns - local_ns)

    def clock_skew_ms(self) -> dict[str, float]:
        return {s: round(statistics.median(w) / 1e6, 3) for s, w in self.skew_ns.items() if w}


@dataclass
class _Burst:
    last_sent: float = float("-inf")
    pending: int = 0
    reason: str = ""
    topic: str | None = None
    excerpt: str | None = None


def excerpt(payload: bytes) -> str:
    head = payload[:EXCERPT_BYTES]
    text = head.decode("utf-8", "replace") if head.isascii() else head.hex(" ")
    return text + ("…" if len(payload) > EXCERPT_BYTES else "")


class Runtime:
    def __init__(self, service: str, config: ServiceConfig, *, manual_ack: bool = False) -> None:
        self.service = service
        self.config = config
        self.instance = config.instance
        self.topics = Topics(config.site, config.prefix)
        self.health = Health()
        self.stop = asyncio.Event()
        self.revision = config.revision  # of the config running now; retained updates must beat it
        self._health_sections: dict[str, Callable[[], dict[str, Any]]] = {}
        self._stop_hooks: list[Callable[[], Awaitable[None]]] = []
        self._handlers: list[tuple[str, Handler]] = []
        self._bursts: dict[str, _Burst] = {}
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent()  # the first call only starts the measurement
        status_topic = self.topics.status(self.instance)
        offline, content_type = codec.encode(self._status("offline").to_wire())
        self.mqtt = MqttConnection(
            config.broker_settings(),
            self._dispatch,
            will=Will(status_topic, offline, content_type),
            manual_ack=manual_ack,
        )
        self.mqtt.on_connect(self._announce)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop.set()

    # ------------------------------------------------------------------ messaging

    async def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Route messages of `topic_filter` to `handler`; what it raises is counted and reported."""
        self._handlers.append((topic_filter, handler))
        await self.mqtt.subscribe(topic_filter, qos)

    async def _dispatch(self, message: Received) -> None:
        self.health.received += 1
        for topic_filter, handler in self._handlers:
            if not matches(message.topic, topic_filter):
                continue
            try:
                await handler(message)
            except PayloadError as exc:
                self.reject(str(exc), message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.health.errors += 1
                log.exception(
                    "handler for %s failed on a message from %s", topic_filter, message.topic
                )
                self.reject(f"internal error: {type(exc).__name__}: {exc}", message, count=False)

    async def publish(
        self,
        topic: str,
        body: dict[str, Any] | Message,
        *,
        encoding: Encoding = Encoding.MSGPACK,
        qos: int = 0,
        retain: bool = False,
        priority: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> PublishResult:
        """Encode once and publish; buffered while the broker is away."""
        wire = body.to_wire(encoding) if isinstance(body, Message) else body
        payload, content_type = codec.encode(wire, encoding)
        result = await self.mqtt.publish(
            topic,
            payload,
            content_type=content_type,
            qos=qos,
            retain=retain,
            priority=priority,
            response_topic=response_topic,
            correlation_data=correlation_data,
        )
        if result.ok:
            self.health.published += 1
        return result

    def ack(self, message: Received) -> None:
        self.mqtt.ack(message)

    async def on_config(self, callback: ConfigCallback) -> None:
        """Hand each retained `ConfigUpdate` newer than the running revision to `callback`.

        Subscribes `config/{instance}`. A malformed update or one for another instance is
        rejected (errors topic); one whose revision is not newer is ignored, so the retained
        message that comes back on every reconnect is applied once. The revision counts as
        applied when the callback is called: a service that refuses the config reports why and
        keeps what it runs, and the same message is not retried. The callback runs in the
        dispatch loop: work that takes long belongs in a task or a queue of the service's own.
        """

        async def handle(message: Received) -> None:
            update = ConfigUpdate.from_wire(codec.decode(message.payload, message.content_type))
            if update.instance != self.instance:
                raise PayloadError(
                    f"config for instance {update.instance!r} on the topic of {self.instance!r}"
                )
            if update.revision <= self.revision:
                log.info(
                    "config revision %d on %s ignored: running revision %d",
                    update.revision,
                    message.topic,
                    self.revision,
                )
                return
            log.info("config revision %d on %s taken", update.revision, message.topic)
            self.revision = update.revision
            await callback(update.config, update.revision)

        await self.subscribe(self.topics.config(self.instance), handle)

    # ------------------------------------------------------------------ rejections

    def reject(self, reason: str, message: Received | None = None, *, count: bool = True) -> None:
        """Count a rejected input; log and report it on the errors topic, once per burst."""
        if count:
            self.health.rejected += 1
        key = f"{message.topic if message else ''}|{reason[:60]}"
        burst = self._bursts.setdefault(key, _Burst())
        burst.pending += 1
        burst.reason, burst.topic = reason, message.topic if message else None
        burst.excerpt = excerpt(message.payload) if message else None
        if time.monotonic() - burst.last_sent >= self.config.timings.error_report_interval_s:
            self._send_burst(burst)

    def _send_burst(self, burst: _Burst) -> None:
        log.warning(
            "rejected %d message(s) from %s: %s", burst.pending, burst.topic or "-", burst.reason
        )
        report = ErrorReport(
            instance=self.instance,
            topic=burst.topic,
            reason=burst.reason,
            excerpt=burst.excerpt,
            count=burst.pending,
        )
        burst.last_sent, burst.pending = time.monotonic(), 0
        task = asyncio.get_running_loop().create_task(
            self.publish(self.topics.errors(self.instance), report)
        )
        task.add_done_callback(_log_failure)

    def _flush_bursts(self) -> None:
        interval = self.config.timings.error_report_interval_s
        for burst in self._bursts.values():
            if burst.pending and time.monotonic() - burst.last_sent >= interval:
                self._send_burst(burst)

    # ------------------------------------------------------------------ status

    def add_health(self, name: str, section: Callable[[], dict[str, Any]]) -> None:
        """Add a service-specific section to the periodic health report."""
        self._health_sections[name] = section

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` when the stop event is set, while the service loops and the connection
        still run (e.g. to put outputs in a safe state); it must bound its own duration."""
        self._stop_hooks.append(hook)

    async def _run_stop_hooks(self) -> None:
        for hook in self._stop_hooks:
            try:
                await hook()
            except Exception:  # a failing hook must not keep the service from stopping
                self.health.errors += 1
                log.exception("stop hook failed")

    def health_report(self) -> dict[str, Any]:
        h, stats = self.health, self.mqtt.stats
        report: dict[str, Any] = {
            "uptime_s": round((now_ns() - h.started_ns) / 1e9, 1),
            "received": h.received,
            "published": h.published,
            "rejected": h.rejected,
            "errors": h.errors,
            "revision": self.revision,
            "reconnects": stats.reconnects,
            "buffered": self.mqtt.buffered,
            "dropped": stats.dropped,
            "clock_skew_ms": h.clock_skew_ms(),
            "pid": self._process.pid,
            "cpu_percent": self._process.cpu_percent(),
            "rss_mb": round(self._process.memory_info().rss / 2**20, 1),
        }
        for name, section in self._health_sections.items():
            try:
                report[name] = section()
            except Exception as exc:  # a broken section must not stop the status
                report[name] = {"error": str(exc)}
        return report

    def _status(self, state: str, health: dict[str, Any] | None = None) -> Status:
        return Status(
            instance=self.instance,
            service=self.service,
            state=state,  # type: ignore[arg-type]
            since=self.health.started_ns,
            health=health or {},
        )

    async def _announce(self) -> None:
        status = self._status("online", self.health_report())
        await self.publish(
            self.topics.status(self.instance), status, qos=1, retain=True, priority=True
        )

    def announce_soon(self) -> None:
        """Publish the status now rather than at the next interval (e.g. the model changed)."""
        if self.mqtt.connected:
            task = asyncio.get_running_loop().create_task(self._announce())
            task.add_done_callback(_log_failure)

    async def status_loop(self) -> None:
        interval = self.config.timings.status_interval_s
        while True:
            await asyncio.sleep(interval)
            self._flush_bursts()
            if self.mqtt.connected:
                await self._announce()

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, *loops: Loop) -> None:
        """Run the MQTT and status loops and the service's loops until stopped."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop.set)
        try:
            async with asyncio.TaskGroup() as group:
                mqtt_task = group.create_task(self.mqtt.run(), name="mqtt_loop")
                status_task = group.create_task(self.status_loop(), name="status_loop")
                service_tasks = [group.create_task(fn(), name=_name(fn)) for fn in loops]
                await self.stop.wait()
                await self._run_stop_hooks()
                for task in service_tasks:
                    task.cancel()
                status_task.cancel()
                await self._say_stopped()
                mqtt_task.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _say_stopped(self) -> None:
        # `priority`: a stop that comes while the outage buffer still drains (right after
        # `online`) must say `stopped` too; with no connection at all there is no one to tell.
        self._flush_bursts()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.publish(
                    self.topics.status(self.instance),
                    self._status("stopped", self.health_report()),
                    qos=1,
                    retain=True,
                    priority=True,
                ),
                timeout=2.0,
            )


def _name(fn: Loop) -> str:
    return getattr(fn, "__name__", "loop")


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a background publish failed: %s", task.exception())


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
