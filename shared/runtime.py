"""The service runtime every edgefleet service runs on.

Skeleton (shared/service.py drives it): validated config → `Runtime(...)` → subscriptions →
`await rt.serve({name: loop})`: one TaskGroup owns the MQTT and status loops, the service's named
loops and every background task (`spawn`), until SIGTERM/SIGINT sets the stop event; then the
stop hooks run, service loops stop, `stopped` is published, and the connection closes. Each step
is bounded: a task that lost its cancel (Python 3.11's `wait_for`) is cancelled again.

It owns the retained status (`online` with periodic health, `stopped` on a clean exit, the last
will `offline`), the error channel (shared/error_channel.py), and the counters a user looks at
when something is wrong (shared/health.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import statistics
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from shared import codec
from shared.codec import Encoding
from shared.config import ServiceConfig
from shared.error_channel import ErrorChannel
from shared.errors import PayloadError
from shared.health import HealthModel, RuntimeHealth
from shared.messages import ConfigUpdate, ErrorReport, Message, Status, now_ns
from shared.mqtt import DISCONNECT_TIMEOUT_S, MqttConnection, PublishResult, Received, Will
from shared.retry import cancel_and_wait
from shared.topics import Topics, matches

log = logging.getLogger(__name__)

Handler = Callable[[Received], Awaitable[None]]
ConfigCallback = Callable[[dict[str, Any], int], Awaitable[None]]
Loop = Callable[[], Coroutine[Any, Any, None]]
HealthSection = Callable[[], HealthModel | dict[str, Any]]
SKEW_WINDOW = 64
# A task still running this long after its cancel is cancelled again: service loops end at once
# on a cancel, the connection may take its clean disconnect's timeout.
CANCEL_AGAIN_S = 2.0
CLOSE_AGAIN_S = DISCONNECT_TIMEOUT_S + 1.0


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


class Runtime:
    def __init__(self, service: str, config: ServiceConfig, *, manual_ack: bool = False) -> None:
        self.service = service
        self.config = config
        self.instance = config.instance
        self.topics = Topics(config.site, config.prefix)
        self.health = Health()
        self.stop = asyncio.Event()
        self.revision = config.revision  # of the config running now, named in the status
        self._config_taken = config.revision  # the newest revision handed on: updates must beat it
        self._health_sections: dict[str, HealthSection] = {}
        self._stop_hooks: list[Callable[[], Awaitable[None]]] = []
        self._handlers: list[tuple[str, Handler, bool]] = []  # (filter, handler, acks itself)
        self.errors = ErrorChannel(
            self.instance, config.timings.error_report_interval_s, self.health, self._send_report
        )
        self._group: asyncio.TaskGroup | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._early: list[tuple[Callable[[], Awaitable[Any]], str]] = []  # spawned before serve
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

    # ------------------------------------------------------------------ messaging

    async def subscribe(
        self, topic_filter: str, handler: Handler, qos: int = 1, *, acks: bool = False
    ) -> None:
        """Route messages of `topic_filter` to `handler`; what it raises is counted and reported.

        With `manual_ack` (a persistent session whose QoS 1 input must survive a crash), a
        message is acknowledged once its handlers ran, whether they returned, rejected it
        (`PayloadError`) or failed: a message refused once will never become good, and one left
        unacknowledged comes back on every reconnect. `acks=True` is for a handler that takes
        charge of its messages' acknowledgements (`ack` after its own commit): a message that
        such a handler matches is acknowledged by it only. Without `manual_ack` the client
        acknowledges on arrival and `acks` changes nothing.
        """
        self._handlers.append((topic_filter, handler, acks))
        await self.mqtt.subscribe(topic_filter, qos)

    async def unsubscribe(self, topic_filter: str, handler: Handler) -> None:
        """Stop routing `topic_filter` to `handler`; unsubscribe when no handler is left on it."""
        self._handlers = [
            (f, h, a) for f, h, a in self._handlers if (f, h) != (topic_filter, handler)
        ]
        if all(f != topic_filter for f, _, _ in self._handlers):
            await self.mqtt.unsubscribe(topic_filter)

    async def _dispatch(self, message: Received) -> None:
        self.health.received += 1
        handler_acks = False
        for topic_filter, handler, acks in self._handlers:
            if not matches(message.topic, topic_filter):
                continue
            handler_acks = handler_acks or acks
            try:
                await handler(message)
            except PayloadError as exc:
                self.reject(str(exc), message)
            except asyncio.CancelledError:
                raise  # stopped mid-handler: not done with it, so the broker delivers it again
            except Exception as exc:
                log.exception(
                    "handler for %s failed on a message from %s", topic_filter, message.topic
                )
                self.errors.error(f"internal error: {type(exc).__name__}: {exc}", message)
        if not handler_acks:
            self.mqtt.ack(message)

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
        expiry_s: int | None = None,
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
            expiry_s=expiry_s,
        )
        if result.ok:
            self.health.published += 1
        return result

    def ack(self, message: Received) -> None:
        """Acknowledge a message of a handler subscribed with `acks=True` (`manual_ack` only)."""
        self.mqtt.ack(message)

    async def on_config(self, callback: ConfigCallback) -> None:
        """Hand each retained `ConfigUpdate` newer than the running revision to `callback`.

        Subscribes `config/{instance}`. A malformed update or one for another instance is
        rejected (errors topic); one whose revision is not newer than the last one handed on is
        ignored, so the retained message that comes back on every reconnect is handled once
        (a refused one is not retried). The callback sets `revision` when it applies the
        config: the status names the revision that runs. The callback runs in the
        dispatch loop: work that takes long belongs in a task or a queue of the service's own.
        """

        async def handle(message: Received) -> None:
            update = ConfigUpdate.from_wire(codec.decode(message.payload, message.content_type))
            if update.instance != self.instance:
                raise PayloadError(
                    f"config for instance {update.instance!r} on the topic of {self.instance!r}"
                )
            if update.revision <= self._config_taken:
                log.info(
                    "config revision %d on %s ignored: revision %d taken already",
                    update.revision,
                    message.topic,
                    self._config_taken,
                )
                return
            log.info("config revision %d on %s taken", update.revision, message.topic)
            self._config_taken = update.revision
            await callback(update.config, update.revision)

        await self.subscribe(self.topics.config(self.instance), handle)

    # ------------------------------------------------------------------ errors

    def reject(self, reason: str, message: Received | None = None) -> None:
        """Count a rejected input; log and report it on the errors topic, once per burst."""
        self.errors.reject(reason, message)

    def _send_report(self, report: ErrorReport) -> None:
        topic = self.topics.errors(self.instance)
        self.spawn(lambda: self.publish(topic, report), "error_report")

    def spawn(self, fn: Callable[[], Awaitable[Any]], name: str) -> None:
        """Run `fn()` as a task of the service's TaskGroup (started with `serve` when called
        before). What it raises is logged: a background publish must not stop the service."""

        async def guarded() -> None:
            try:
                await fn()
            except Exception as exc:
                log.warning("background task %s failed: %s", name, exc)

        if self._group is None:
            self._early.append((fn, name))
            return
        task = self._group.create_task(guarded(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ status

    def add_health(self, name: str, section: HealthSection) -> None:
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
        report = RuntimeHealth(
            uptime_s=round((now_ns() - h.started_ns) / 1e9, 1),
            received=h.received,
            published=h.published,
            rejected=h.rejected,
            errors=h.errors,
            revision=self.revision,
            reconnects=stats.reconnects,
            buffered=self.mqtt.buffered,
            dropped=stats.dropped,
            clock_skew_ms=h.clock_skew_ms(),
            pid=self._process.pid,
            cpu_percent=self._process.cpu_percent(),
            cpu_seconds=round(sum(self._process.cpu_times()[:2]), 3),
            rss_mb=round(self._process.memory_info().rss / 2**20, 1),
        ).to_wire()
        for name, section in self._health_sections.items():
            try:
                value = section()
                report[name] = value.to_wire() if isinstance(value, HealthModel) else value
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
            self.spawn(self._announce, "announce")

    async def status_loop(self) -> None:
        interval = self.config.timings.status_interval_s
        while True:
            await asyncio.sleep(interval)
            self.errors.flush()
            if self.mqtt.connected:
                await self._announce()

    # ------------------------------------------------------------------ lifecycle

    async def serve(
        self, loops: Mapping[str, Loop] | None = None, *, handle_signals: bool = True
    ) -> None:
        """Run the MQTT and status loops and the service's named loops until stopped.

        `handle_signals=False` for a runtime inside a process that owns its signals (the agent
        inside `edgefleet up`): it stops when `stop` is set."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop.set)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                mqtt_task = group.create_task(self.mqtt.run(), name="mqtt_loop")
                status_task = group.create_task(self.status_loop(), name="status_loop")
                service_tasks = [
                    group.create_task(fn(), name=name) for name, fn in (loops or {}).items()
                ]
                early, self._early = self._early, []
                for fn, name in early:
                    self.spawn(fn, name)
                await self.stop.wait()
                await self._run_stop_hooks()
                # each stage waits for its tasks' end, cancelling again one that lost its cancel
                # (shared.retry.cancel_and_wait): one cancel alone left a Modbus poll loop running
                # for ever after its SIGTERM
                await cancel_and_wait([*service_tasks, status_task], again_after_s=CANCEL_AGAIN_S)
                await self._say_stopped()
                await cancel_and_wait([*self._background, mqtt_task], again_after_s=CLOSE_AGAIN_S)
                while self._background:  # spawned while the connection closed
                    await cancel_and_wait(self._background, again_after_s=CANCEL_AGAIN_S)
        finally:
            self._group = None
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _say_stopped(self) -> None:
        # `priority`: a stop that comes while the outage buffer still drains (right after
        # `online`) must say `stopped` too; with no connection at all there is no one to tell.
        self.errors.flush()
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


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
