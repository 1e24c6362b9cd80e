"""The adapter's one OPC UA session, supervised.

`Session.run()` builds a fresh asyncua client, connects (with security and user), creates one
subscription and a monitored item per signal, then watches it. The watchdog rebuilds everything
from scratch when the transport drops, when publishes (data or keep-alives) stop arriving, or when
no data change has come for `stall_after_s` while the session still looks alive. Signals whose
node ids fail are reported and retried every `retry_nodes_s`; the others flow meanwhile.

Publish responses are handled by our own callback, registered with the session: every
DataChangeNotification becomes one ReadingBatch, without a task or a call per value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError

from services.opcua.batch import Gatherer, to_ns
from services.opcua.config import OpcUaConfig
from services.opcua.security import TrustList, apply
from shared import clock
from shared.errors import ConfigError
from shared.messages import ReadingBatch, now_ns
from shared.retry import Backoff, raise_if_cancelled

log = logging.getLogger(__name__)
BatchSink = Callable[[ReadingBatch], Awaitable[None]]
Reporter = Callable[[str], Awaitable[None]]


@dataclass
class SessionHealth:
    connected: bool = False
    state: str = "starting"  # starting | connected | reconnecting | stalled | refused
    sessions: int = 0  # sessions built since start (1 + rebuilds)
    last_reason: str = ""
    readings: int = 0
    bad: int = 0
    publishes: int = 0
    keepalives: int = 0
    stalls: int = 0
    failed_nodes: dict[str, str] = field(default_factory=dict)
    revised: dict[str, float] = field(default_factory=dict)


def resolve_node(text: str, namespaces: list[str]) -> ua.NodeId:
    """Parse a node id; `nsu=URI;...` is resolved against the server's namespace array."""
    if text.startswith("nsu="):
        uri, _, rest = text[4:].partition(";")
        if uri not in namespaces:
            raise ValueError(f"namespace {uri!r} is not on the server")
        text = f"ns={namespaces.index(uri)};{rest}"
    return ua.NodeId.from_string(text)


class Session:
    def __init__(self, config: OpcUaConfig, sink: BatchSink, report: Reporter) -> None:
        self.config, self.sink, self.report = config, sink, report
        self.w = config.watchdog
        self.signals = [s.name for s in config.signals]
        self.gatherer = Gatherer(config.source, self.signals)
        self.health = SessionHealth()
        self.client: Client | None = None
        self.trust = TrustList(config.security) if config.security.policy != "None" else None
        self.node_ids: dict[int, ua.NodeId] = {}
        self._lost = asyncio.Event()
        self._ready = asyncio.Event()
        self._sub_id: int | None = None
        self._subscribed: set[int] = set()
        self._failed: set[int] = set()
        self._last_publish = 0.0
        self._last_data = 0.0
        self._keepalive_deadline_s = self.w.keepalive_s * self.w.dead_after_keepalives
        self._reported = ""

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect, watch, rebuild; forever."""
        backoff = Backoff(self.w.reconnect_initial_s, self.w.reconnect_max_s)
        while True:
            try:
                await self._build()
                backoff.reset()
                reason = await self._watch()
            except ConfigError:
                raise
            except (OSError, TimeoutError, UaError, ConnectionError) as exc:
                raise_if_cancelled()
                reason = f"connect failed: {_describe(exc)}"
            except Exception as exc:  # a library bug must not end supervision
                raise_if_cancelled()
                log.exception("opcua session to %s failed", self.config.endpoint)
                reason = f"unexpected: {_describe(exc)}"
            await self._lose(reason)
            await asyncio.sleep(backoff.next_delay())

    async def close(self) -> None:
        await self._teardown()

    async def wait_ready(self) -> Client:
        await self._ready.wait()
        assert self.client is not None
        return self.client

    # ------------------------------------------------------------------ building

    def _new_client(self) -> Client:
        # asyncua's own check (a Read every interval, timing out after the interval) would
        # notice a silent server before our publish deadline and only say "TimeoutError": give
        # it a longer interval, so the deadline that names the silence acts first and asyncua's
        # check stays a backstop (and keeps the session from expiring)
        deadline_s = self.w.keepalive_s * self.w.dead_after_keepalives
        client = Client(
            self.config.endpoint,
            timeout=self.w.request_timeout_s,
            watchdog_intervall=min(2 * deadline_s, self.w.session_timeout_s / 2),
        )
        client.session_timeout = int(self.w.session_timeout_s * 1000)
        client.name = client.description = f"edgefleet {self.config.instance}"
        client.connection_lost_callback = self._on_connection_lost
        if self.config.auth.username:
            client.set_user(self.config.auth.username)
            password = self.config.auth.password()
            if password is not None:
                client.set_password(password)
        return client

    async def _build(self) -> None:
        await self._teardown()
        self._lost.clear()
        client = self._new_client()
        self.client = client
        await apply(client, self.config.security, self.trust)
        await asyncio.wait_for(client.connect(), self.w.request_timeout_s * 2)
        self.health.sessions += 1
        namespaces = await client.get_namespace_array()
        await self._create_subscription(client)
        unresolved = self._resolve(namespaces)
        await self._monitor(client, [i for i in range(len(self.signals)) if i in self.node_ids])
        await self._report_failed(unresolved)
        now = clock.monotonic()
        self._last_publish = self._last_data = now
        self.health.connected = True
        if self.health.state != "stalled":  # stays stalled until new data comes
            self.health.state = "connected"
        self._ready.set()
        log.info(
            "opcua %s: session %d up, %d of %d signals subscribed",
            self.config.endpoint,
            self.health.sessions,
            len(self._subscribed),
            len(self.signals),
        )

    def _resolve(self, namespaces: list[str]) -> list[int]:
        """Parse every signal's node id; return those newly refused."""
        self.node_ids = {}
        failed = []
        for i, s in enumerate(self.config.signals):
            try:
                self.node_ids[i] = resolve_node(s.node, namespaces)
            except (ValueError, UaError) as exc:
                if self._fail(i, f"BadNodeIdInvalid: {exc}"):
                    failed.append(i)
        return failed

    async def _create_subscription(self, client: Client) -> None:
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self.config.publishing_ms
        keepalive = max(1, math.ceil(self.w.keepalive_s * 1000 / self.config.publishing_ms))
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = keepalive * 4
        params.MaxNotificationsPerPublish = 0  # no limit: one publish carries what queued
        params.PublishingEnabled = True
        params.Priority = 0
        result = await client.uaclient.create_subscription(params, self._on_publish)
        self._sub_id = result.SubscriptionId
        interval_s = result.RevisedPublishingInterval / 1000
        self._keepalive_deadline_s = (
            max(interval_s * result.RevisedMaxKeepAliveCount, interval_s)
            * self.w.dead_after_keepalives
        )
        self.health.revised = {
            "publishing_ms": result.RevisedPublishingInterval,
            "keepalive_count": result.RevisedMaxKeepAliveCount,
            "lifetime_count": result.RevisedLifetimeCount,
        }

    async def _monitor(self, client: Client, indexes: list[int]) -> None:
        """Create monitored items for `indexes`; those the server refuses are reported."""
        if not indexes or self._sub_id is None:
            return
        requests = []
        for i in indexes:
            s = self.config.signals[i]
            item = ua.MonitoredItemCreateRequest()
            item.ItemToMonitor = ua.ReadValueId(
                NodeId=self.node_ids[i], AttributeId=AttributeIds.Value
            )
            item.MonitoringMode = ua.MonitoringMode.Reporting
            p = ua.MonitoringParameters()
            p.ClientHandle = i
            p.SamplingInterval = self.config.sampling(s)
            p.QueueSize = self.config.queue_size(s)
            p.DiscardOldest = True
            item.RequestedParameters = p
            requests.append(item)
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = self._sub_id
        params.ItemsToCreate = requests
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        results = await client.uaclient.create_monitored_items(params)
        failed = []  # newly refused, or refused for another reason than last time
        for i, result in zip(indexes, results, strict=True):
            if result.StatusCode.is_good():
                self._subscribed.add(i)
                self._failed.discard(i)
                self.health.failed_nodes.pop(self.signals[i], None)
            elif self._fail(i, result.StatusCode.name):
                failed.append(i)
        await self._report_failed(failed)

    async def _report_failed(self, indexes: list[int]) -> None:
        """Report refused signals on the errors topic and give each a bad reading."""
        if not indexes:
            return
        names = ", ".join(
            f"{self.signals[i]} ({self.health.failed_nodes[self.signals[i]]})" for i in indexes
        )
        await self.report(
            f"node ids refused by {self.config.endpoint}, retried every "
            f"{self.w.retry_nodes_s:g} s: {names}"
        )
        await self._emit(self.gatherer.bad(indexes, now_ns()))

    def _fail(self, i: int, why: str) -> bool:
        """Mark signal `i` refused; True if it was not refused, or for another reason."""
        self._failed.add(i)
        self._subscribed.discard(i)
        new = self.health.failed_nodes.get(self.signals[i]) != why
        self.health.failed_nodes[self.signals[i]] = why
        return new

    # ------------------------------------------------------------------ watching

    async def _watch(self) -> str:
        """Return why the session must be rebuilt."""
        next_retry = clock.monotonic() + self.w.retry_nodes_s
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: it may lose a stop's cancel
                async with asyncio.timeout(self.w.check_s):
                    await self._lost.wait()
            client = self.client
            if self._lost.is_set() or client is None:
                return self.health.last_reason or "connection lost"
            if client.uaclient.state is not UaClientState.CONNECTED:
                return f"transport {client.uaclient.state.value}"
            now = clock.monotonic()
            if now - self._last_publish > self._keepalive_deadline_s:
                return f"{SILENT} for {now - self._last_publish:.1f} s"
            stall = self.w.stall_after_s
            if stall is not None and self._subscribed and now - self._last_data > stall:
                self.health.stalls += 1
                return f"stalled: keep-alives but no data change for {now - self._last_data:.1f} s"
            if self._failed and now >= next_retry:
                next_retry = now + self.w.retry_nodes_s
                await self._retry_failed(client)

    async def _retry_failed(self, client: Client) -> None:
        namespaces = await client.get_namespace_array()
        for i in sorted(self._failed):
            with contextlib.suppress(ValueError, UaError):
                self.node_ids[i] = resolve_node(self.config.signals[i].node, namespaces)
        await self._monitor(client, sorted(i for i in self._failed if i in self.node_ids))

    async def _on_connection_lost(self, exc: Exception) -> None:
        self.health.last_reason = f"connection lost: {_describe(exc)}"
        self._lost.set()

    def _complete_ns(self, message: ua.NotificationMessage) -> int | None:
        """What a publish says beyond its values: the server sent every change it sampled
        before its PublishTime, so no change stamped before PublishTime − sampling interval
        is still to come (assumes source timestamps on the server's clock)."""
        published = message.PublishTime
        if published is None:
            return None
        slowest = max((self.config.sampling(s) for s in self.config.signals), default=0.0)
        return to_ns(published) - int(slowest * 1_000_000)

    async def _on_publish(self, result: ua.PublishResult) -> None:
        self._last_publish = clock.monotonic()
        message = result.NotificationMessage
        data = message.NotificationData
        arrival = now_ns()
        complete = self._complete_ns(message)
        if not data:
            # a keep-alive: nothing changed, but a batch without readings would surprise
            # consumers that read batches as readings; the next data publish says it
            self.health.keepalives += 1
            return
        self.health.publishes += 1
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                batch = self.gatherer.gather(notification.MonitoredItems, arrival)
                if batch is not None:
                    self._last_data = self._last_publish
                    self._reported = ""
                    self.health.state = "connected"
                    batch.complete_ns = complete
                    await self._emit(batch)
            elif isinstance(notification, ua.StatusChangeNotification):
                status = notification.Status
                if status is not None and not status.is_good():
                    # asyncua also sends BadShutdown to its subscriptions after it found the
                    # connection lost: keep the reason the lost-connection callback gave
                    if not self._lost.is_set():
                        self.health.last_reason = f"subscription status {status.name}"
                    self._lost.set()

    async def _emit(self, batch: ReadingBatch | None) -> None:
        if batch is None:
            return
        self.health.readings += len(batch)
        self.health.bad += int((batch.q == 2).sum())
        await self.sink(batch)

    # ------------------------------------------------------------------ losing

    async def _lose(self, reason: str) -> None:
        """Tear down, mark every subscribed signal bad, and say why."""
        was_up = self.health.connected
        self._ready.clear()
        self.health.connected = False
        self.health.last_reason = reason
        self.health.state = "stalled" if reason.startswith("stalled") else "reconnecting"
        if "BadCertificate" in reason or "BadSecurity" in reason or "BadUser" in reason:
            self.health.state = "refused"
        # a silent or lost server would not answer a CloseSession either: waiting
        # request_timeout_s for it would delay the bad marker and the report by that much
        await self._teardown(polite=not reason.startswith((SILENT, "connection lost")))
        if was_up:
            await self._emit(self.gatherer.bad(self._subscribed | self._failed, now_ns()))
        kind = reason.split(":", 1)[0]
        if kind != self._reported:  # once per kind of trouble, not once per retry
            self._reported = kind
            log.warning("opcua %s: rebuilding the session: %s", self.config.endpoint, reason)
            await self.report(f"session to {self.config.endpoint}: {reason}")
        else:
            log.info("opcua %s: rebuilding the session: %s", self.config.endpoint, reason)
        self._subscribed.clear()

    async def _teardown(self, polite: bool = True) -> None:
        client, self.client = self.client, None
        self._sub_id = None
        if client is None:
            return
        client.connection_lost_callback = None
        try:
            if not polite:
                raise TimeoutError("the server is silent")
            await asyncio.wait_for(client.disconnect(), self.w.request_timeout_s)
        except Exception as exc:  # the server may be gone: drop the socket
            log.debug("disconnect from %s: %s", self.config.endpoint, _describe(exc))
            with contextlib.suppress(Exception):
                client.disconnect_socket()


SILENT = "no publish or keep-alive"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"
