"""The one MQTT module: the only importer of the MQTT client library (aiomqtt over paho).

What it adds to aiomqtt 2.5:
- MQTT v5 always, TCP_NODELAY on the socket (without it a burst's last message waits ~40 ms);
- a supervised connection: reconnect with capped backoff and jitter, resubscribe first, then run
  the caller's on-connect hooks (the runtime publishes `online` there), then drain the outage
  buffer; bad credentials stop the retries with a clear error;
- publish results with the broker's reason code (aiomqtt drops it, so publishes go through paho
  here; "no matching subscribers" counts as success), a cap on QoS 1 messages in flight;
- a bounded buffer for publishes made while the broker is away, oldest dropped first and counted;
- acknowledgement of QoS 1 messages under the caller's control (`manual_ack`), so a service can
  commit a message before the broker forgets it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared.errors import ProtocolError
from shared.retry import Backoff

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10
DISCONNECT_TIMEOUT_S = 2.0
_BAD_CREDENTIALS = {0x86, 0x87, 4, 5}  # v5 bad user name or password / not authorized; v3 codes


class NotConnected(ProtocolError):
    """The broker is not reachable now and the caller asked not to buffer."""


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    keepalive_s: int = 30
    clean_start: bool = True
    session_expiry_s: int | None = None  # with clean_start False: a persistent session
    max_inflight: int = 100  # QoS 1 messages awaiting PUBACK at once
    outbox_max: int = 10_000  # publishes buffered while the broker is away
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 10.0


@dataclass(frozen=True)
class Received:
    """One message as a handler sees it."""

    topic: str
    payload: bytes
    content_type: str | None
    qos: int
    retain: bool
    mid: int
    response_topic: str | None = None
    correlation_data: bytes | None = None
    connection: int = 0  # which connection delivered it: an ack only makes sense on that one


@dataclass(frozen=True)
class PublishResult:
    reason_code: int
    reason: str
    queued: bool = False  # buffered while the broker was away; sent on reconnect

    @property
    def ok(self) -> bool:
        return self.queued or self.reason_code < 0x80


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    content_type: str | None = None
    qos: int = 0
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass
class ConnectionStats:
    connects: int = 0
    reconnects: int = 0
    published: int = 0
    received: int = 0
    buffered: int = 0
    dropped: int = 0  # buffered publishes dropped because the buffer was full
    publish_failures: int = 0


Handler = Callable[[Received], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


@dataclass
class Will:
    topic: str
    payload: bytes
    content_type: str | None = None
    qos: int = 1
    retain: bool = True


def _new_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho is untyped here


_CONTENT_TYPE_PROPERTIES: dict[str, Properties] = {}


def _properties(msg: Outgoing) -> Properties | None:
    if not (msg.content_type or msg.response_topic or msg.correlation_data):
        return None
    if msg.content_type and not (msg.response_topic or msg.correlation_data):
        # building paho Properties costs more than encoding a batch: reuse one per content type
        cached = _CONTENT_TYPE_PROPERTIES.get(msg.content_type)
        if cached is None:
            cached = _new_properties(PacketTypes.PUBLISH)
            cached.ContentType = msg.content_type
            _CONTENT_TYPE_PROPERTIES[msg.content_type] = cached
        return cached
    props = _new_properties(PacketTypes.PUBLISH)
    if msg.content_type:
        props.ContentType = msg.content_type
    if msg.response_topic:
        props.ResponseTopic = msg.response_topic
    if msg.correlation_data is not None:
        props.CorrelationData = msg.correlation_data
    return props


def _prop(message: aiomqtt.Message, name: str) -> Any:
    return getattr(message.properties, name, None) if message.properties else None


class MqttConnection:
    """A supervised MQTT v5 connection. Run `run()` as a task; cancel it to disconnect."""

    def __init__(
        self,
        settings: BrokerSettings,
        handler: Handler | None = None,
        *,
        will: Will | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.settings = settings
        self._handler = handler
        self._will = will
        self._manual_ack = manual_ack
        self._subscriptions: dict[str, int] = {}
        self._on_connect: list[Hook] = []
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()
        self._outbox: deque[Outgoing] = deque()
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._inflight = asyncio.Semaphore(settings.max_inflight)
        self._backoff = Backoff(settings.reconnect_initial_s, settings.reconnect_max_s)
        self.stats = ConnectionStats()

    # ------------------------------------------------------------------ configuration

    def on_connect(self, hook: Hook) -> None:
        """Run `hook` after each (re)connect: subscriptions are back, the buffer not yet drained."""
        self._on_connect.append(hook)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again on every reconnect."""
        self._subscriptions[topic_filter] = qos
        if self._client is not None and self._ready.is_set():
            await self._subscribe(self._client, topic_filter, qos)

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    @property
    def buffered(self) -> int:  # publishes waiting in the outbox for the broker
        return len(self._outbox)

    async def wait_connected(self) -> None:
        await self._ready.wait()

    # ------------------------------------------------------------------ publishing

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        content_type: str | None = None,
        qos: int = 0,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        buffer: bool = True,
        priority: bool = False,
    ) -> PublishResult:
        """Publish and return the broker's verdict (QoS 1: the PUBACK reason code).

        While the broker is away the message is buffered (`queued=True`), unless `buffer` is
        False, in which case `NotConnected` is raised so the caller keeps ownership of it.
        `priority` messages (status) go out from on-connect hooks, ahead of the buffer.
        """
        msg = Outgoing(topic, payload, content_type, qos, retain, response_topic, correlation_data)
        client = self._client
        if client is None or not (self._ready.is_set() or priority):
            return self._buffer_or_raise(msg, buffer)
        try:
            return await self._send(client, msg)
        except NotConnected:
            return self._buffer_or_raise(msg, buffer)

    def _buffer_or_raise(self, msg: Outgoing, buffer: bool) -> PublishResult:
        if not buffer:
            raise NotConnected(f"not connected to {self.settings.host}:{self.settings.port}")
        if len(self._outbox) >= self.settings.outbox_max:
            self._outbox.popleft()
            self.stats.dropped += 1
        self._outbox.append(msg)
        self.stats.buffered += 1
        return PublishResult(0, "Queued", queued=True)

    async def _send(self, client: aiomqtt.Client, msg: Outgoing) -> PublishResult:
        paho = client._client  # aiomqtt hides the reason code: publish through paho directly
        async with self._inflight:
            info = paho.publish(msg.topic, msg.payload, msg.qos, msg.retain, _properties(msg))
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise NotConnected(f"publish to {msg.topic} failed: {MQTTErrorCode(info.rc).name}")
            if msg.qos == 0:
                self.stats.published += 1
                await asyncio.sleep(0)  # let the socket writer run: a tight loop would only queue
                return PublishResult(0, "Success")
            future = self._pending.get(info.mid)
            if future is None:
                future = asyncio.get_running_loop().create_future()
                self._pending[info.mid] = future
            try:
                code = await future
            finally:
                self._pending.pop(info.mid, None)
        value = int(code.value)
        result = PublishResult(value, code.getName())
        if result.ok:
            self.stats.published += 1
        else:
            self.stats.publish_failures += 1
            log.warning(
                "broker refused publish to %s: %s (0x%02x)", msg.topic, result.reason, value
            )
        return result

    def _on_publish(
        self, _client: Any, _userdata: Any, mid: int, reason_code: ReasonCode, _props: Any
    ) -> None:
        future = self._pending.get(mid)
        if future is None:  # acked before the publisher registered: keep the verdict for it
            future = asyncio.get_running_loop().create_future()
            self._pending[mid] = future
        if not future.done():
            future.set_result(reason_code)

    def ack(self, message: Received) -> None:
        """Acknowledge a QoS 1 message received with `manual_ack`; a stale one is ignored."""
        client = self._client
        if not self._manual_ack or message.qos == 0 or client is None:
            return
        if message.connection != self.stats.connects:
            return  # that connection is gone: the broker will deliver the message again
        client._client.ack(message.mid, message.qos)

    # ------------------------------------------------------------------ connection loop

    def _new_client(self) -> aiomqtt.Client:
        s = self.settings
        connect_props = None
        if s.session_expiry_s is not None:
            connect_props = _new_properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = s.session_expiry_s
        will = None
        if self._will is not None:
            wp = _new_properties(PacketTypes.WILLMESSAGE)
            if self._will.content_type:
                wp.ContentType = self._will.content_type
            will = aiomqtt.Will(
                self._will.topic, self._will.payload, self._will.qos, self._will.retain, wp
            )
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id or None,
            username=s.username,
            password=s.password,
            tls_context=s.tls,
            keepalive=s.keepalive_s,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=s.clean_start,
            properties=connect_props,
            will=will,
            max_inflight_messages=s.max_inflight,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            timeout=max(5.0, float(s.keepalive_s)),
        )
        client._client.on_publish = self._on_publish
        if self._manual_ack:
            client._client.manual_ack_set(True)
        return client

    async def run(self) -> None:
        """Connect, serve, and reconnect for ever; cancel the task to disconnect cleanly."""
        while True:
            try:
                await self._serve_once()
            except MqttConnectError as exc:
                code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
                if code in _BAD_CREDENTIALS:
                    raise ProtocolError(
                        f"broker {self.settings.host}:{self.settings.port} refused the "
                        f"credentials ({exc}); not retrying"
                    ) from None
                self._lost(exc)
            except (aiomqtt.MqttError, NotConnected, OSError) as exc:
                self._lost(exc)
            await asyncio.sleep(self._backoff.next_delay())

    def _lost(self, exc: BaseException) -> None:
        if self._ready.is_set() or self._backoff.attempts == 0:
            log.warning(
                "MQTT connection to %s:%s lost: %s; reconnecting",
                self.settings.host,
                self.settings.port,
                exc,
            )
        self._ready.clear()
        self._client = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NotConnected(f"connection lost: {exc}"))

    async def _serve_once(self) -> None:
        client = self._new_client()
        await client.__aenter__()
        try:
            self._client = client
            self.stats.connects += 1
            if self.stats.connects > 1:
                self.stats.reconnects += 1
            connection = self.stats.connects
            for topic_filter, qos in list(self._subscriptions.items()):
                await self._subscribe(client, topic_filter, qos)
            for hook in self._on_connect:
                await hook()
            await self._drain(client)
            self._ready.set()
            self._backoff.reset()
            log.info("MQTT connected to %s:%s", self.settings.host, self.settings.port)
            async for message in client.messages:
                await self._dispatch(message, connection)
        finally:
            self._ready.clear()
            self._client = None
            await self._disconnect(client)

    async def _disconnect(self, client: aiomqtt.Client) -> None:
        """Say goodbye to the broker, but never wait for ever: aiomqtt waits for the
        disconnection without a timeout, and a shutdown must not hang on a silent peer."""
        try:
            await asyncio.wait_for(client.__aexit__(None, None, None), DISCONNECT_TIMEOUT_S)
        except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
            log.debug("MQTT disconnect from %s:%s: %s", self.settings.host, self.settings.port, exc)

    async def _subscribe(self, client: aiomqtt.Client, topic_filter: str, qos: int) -> None:
        codes = await client.subscribe(topic_filter, qos)
        for code in codes:
            value = code.value if isinstance(code, ReasonCode) else int(code)
            if value >= 0x80:
                raise ProtocolError(f"broker refused subscription to {topic_filter!r}: {code}")

    async def _drain(self, client: aiomqtt.Client) -> None:
        while self._outbox:
            msg = self._outbox.popleft()
            try:
                await self._send(client, msg)
            except NotConnected:
                self._outbox.appendleft(msg)
                raise

    async def _dispatch(self, message: aiomqtt.Message, connection: int) -> None:
        payload = message.payload
        if not isinstance(payload, bytes):
            payload = str(payload).encode() if payload is not None else b""
        received = Received(
            topic=message.topic.value,
            payload=payload,
            content_type=_prop(message, "ContentType"),
            qos=message.qos,
            retain=message.retain,
            mid=message.mid,
            response_topic=_prop(message, "ResponseTopic"),
            correlation_data=_prop(message, "CorrelationData"),
            connection=connection,
        )
        self.stats.received += 1
        if self._handler is None:
            return
        try:
            await self._handler(received)
        except asyncio.CancelledError:
            raise
        except Exception:  # a handler bug must not stop the dispatch loop
            log.exception("handler failed on a message from %s", received.topic)


@dataclass
class Subscription:
    """Messages of one filter gathered into a queue: for tools and tests that read a stream."""

    queue: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)

    async def handler(self, message: Received) -> None:
        await self.queue.put(message)
