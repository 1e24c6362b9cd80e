"""The one MQTT module: the only importer of the MQTT client library (gmqtt).

Why gmqtt: it parses every packet of a socket read in one pass on the asyncio loop (no
per-packet syscalls, no per-message wrapper), which measured 3× raw paho's message rate
(bench/mqtt_clients.py); aiomqtt over paho was 0.3×. What this module adds to it:
- MQTT v5 always, TCP_NODELAY on the socket (without it a burst's last message waits ~40 ms);
- a supervised connection: reconnect with capped backoff and jitter (gmqtt's own reconnect is
  turned off: one client per connection), resubscribe first, then run the caller's on-connect
  hooks (the runtime publishes `online` there), then drain the outage buffer; bad credentials
  stop the retries with a clear error;
- publish results with the broker's PUBACK reason code (gmqtt does not parse it; "no matching
  subscribers" counts as success), a cap on QoS 1 messages in flight;
- a bounded buffer for publishes made while the broker is away, oldest dropped first and counted;
- received messages handed to the handler in bursts: one loop wakeup per socket read, not per
  packet, and a yield to the loop every DISPATCH_YIELD messages of a long burst (the timers and
  publishes due meanwhile run then: a service's 5 ms tick does not wait for 5,000 messages);
- acknowledgement of QoS 1 messages under the caller's control (`manual_ack`), so a service can
  commit a message before the broker forgets it.
- a will made afresh for each connection when `will` is a function, and optionally sent on a
  clean close too (MQTT 5 reason code 0x04): Sparkplug's NDEATH carries each session's bdSeq.

gmqtt leaves three things to its internals, reached here only: the packet id of a publish, the
PUBACK reason code and the packet id of a received QoS 1 message (for a later ack).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTCommands, MQTTv50
from gmqtt.mqtt.handler import MQTTConnectError

from shared.errors import ProtocolError
from shared.retry import Backoff, raise_if_cancelled

log = logging.getLogger(__name__)
logging.getLogger("gmqtt").setLevel(logging.WARNING)  # INFO per connect and subscribe is noise

NO_MATCHING_SUBSCRIBERS = 0x10
DISCONNECT_WITH_WILL = 0x04  # MQTT 5: a clean disconnect after which the broker sends the will
DISCONNECT_TIMEOUT_S = 2.0
INBOX_HIGH = 5_000  # received messages waiting for the handler: stop reading the socket there
BURST_YIELD = 64  # QoS 0 publishes between two yields to the loop (the receive side runs then)
DISPATCH_YIELD = 256  # received messages handled between two yields to the loop (timers run then)
_BAD_CREDENTIALS = {0x86, 0x87, 4, 5}  # v5 bad user name or password / not authorized; v3 codes
_NO_RECONNECT = -2  # gmqtt reconnects while failures <= retries: never, so we supervise alone
_REASONS = {
    0x00: "Success",
    0x10: "No matching subscribers",
    0x80: "Unspecified error",
    0x83: "Implementation specific error",
    0x87: "Not authorized",
    0x90: "Topic Name invalid",
    0x91: "Packet identifier in use",
    0x97: "Quota exceeded",
    0x99: "Payload format invalid",
}


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
    max_inflight: int = 100  # QoS 1 messages awaiting PUBACK at once (below the broker's maximum)
    outbox_max: int = 10_000  # publishes buffered while the broker is away
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 10.0


@dataclass(frozen=True, slots=True)
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


_SUCCESS = PublishResult(0, "Success")
_QUEUED = PublishResult(0, "Queued", queued=True)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    content_type: str | None = None
    qos: int = 0
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    expiry_s: int | None = None  # MQTT v5 message expiry: the brokers drop it after that


@dataclass
class ConnectionStats:
    connects: int = 0
    reconnects: int = 0
    published: int = 0
    received: int = 0
    buffered: int = 0
    dropped: int = 0  # buffered publishes dropped because the buffer was full
    publish_failures: int = 0
    last_error: str = (
        ""  # why the last connection attempt or connection failed ("" after a connect)
    )


def connect_error(exc: BaseException, host: str, port: int) -> str:
    """What a failed connection says to an operator; a certificate the CA does not vouch for is
    named as such (it is a configuration to fix, not a network outage)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the certificate of {host}:{port} is not trusted by the configured CA "
            f"(ca_file): {exc.verify_message or exc}"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {host}:{port} failed: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


Handler = Callable[[Received], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


@dataclass
class Will:
    topic: str
    payload: bytes
    content_type: str | None = None
    qos: int = 1
    retain: bool = True


def _first(properties: dict[str, list[Any]], name: str) -> Any:
    values = properties.get(name)
    return values[0] if values else None


def _message(msg: Outgoing) -> Any:
    props: dict[str, Any] = {}
    if msg.content_type:
        props["content_type"] = msg.content_type
    if msg.response_topic:
        props["response_topic"] = msg.response_topic
    if msg.correlation_data is not None:
        props["correlation_data"] = msg.correlation_data
    if msg.expiry_s is not None:
        props["message_expiry_interval"] = msg.expiry_s
    return gmqtt.Message(msg.topic, msg.payload, msg.qos, msg.retain, **props)


class _Session:
    """One gmqtt client for one network connection, and what this module needs from it."""

    def __init__(self, owner: MqttConnection, number: int) -> None:
        s, will = owner.settings, owner._will
        if callable(will):  # a will of its own per connection (Sparkplug's NDEATH carries bdSeq)
            will = will()
        props: dict[str, Any] = {}
        if s.session_expiry_s is not None:
            props["session_expiry_interval"] = s.session_expiry_s
        will_message = None
        if will is not None:
            will_message = _message(
                Outgoing(will.topic, will.payload, will.content_type, will.qos, will.retain)
            )
        self.owner, self.number = owner, number
        self.lost = asyncio.Event()
        self.suback: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self.unsuback: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        # QoS 1 publishes awaiting their PUBACK on this connection (packet ids are per client)
        self.pending: dict[int, asyncio.Future[int]] = {}
        client = gmqtt.Client(
            s.client_id or None,
            clean_session=s.clean_start,
            optimistic_acknowledgement=True,
            will_message=will_message,
            **props,
        )
        client.set_config({"reconnect_retries": _NO_RECONNECT})
        if s.username is not None:
            client.set_auth_credentials(s.username, s.password)
        client.on_message = self._on_qos0
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_suback
        client.on_unsubscribe = self._on_unsuback
        handler = client._package_handler
        handler._handle_puback_packet = self._on_puback
        handler._handle_qos_1_publish_packet = self._on_qos1
        self.client, self._handler = client, handler
        self.limit = s.max_inflight  # set again from the CONNACK
        self.inflight = asyncio.Semaphore(self.limit)

    def window(self, wanted: int) -> int:
        """QoS 1 publishes this connection may have awaiting their PUBACK: `wanted`, below the
        broker's receive maximum (CONNACK). gmqtt hands out at most receive maximum - 1 packet
        ids and raises OverflowError past them; one is kept for a subscribe or unsubscribe."""
        values = self._handler._connack_properties.get("receive_maximum")
        if not values:
            return wanted  # absent: 65,535 (MQTT v5 3.2.2.3.3)
        return max(1, min(wanted, int(values[0]) - 2))

    async def connect(self) -> None:
        s = self.owner.settings
        # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that races completion
        async with asyncio.timeout(max(5.0, float(s.keepalive_s))):
            connecting = asyncio.ensure_future(
                self.client.connect(
                    s.host, s.port, ssl=s.tls or False, keepalive=s.keepalive_s, version=MQTTv50
                )
            )
            # gmqtt waits for the CONNACK without watching the socket: a broker that closes
            # it first (one shutting down) would hold us here until the timeout
            lost = asyncio.ensure_future(self.lost.wait())
            try:
                await asyncio.wait({connecting, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                if not connecting.done():
                    connecting.cancel()
                    await asyncio.gather(connecting, return_exceptions=True)
            if connecting.cancelled():
                if self._handler.has_error:  # a refused CONNACK, then the close: say why
                    raise self._handler.propagate_error()
                raise NotConnected("the broker closed the connection before its CONNACK")
            connecting.result()
        self.limit = self.window(s.max_inflight)
        self.inflight = asyncio.Semaphore(self.limit)
        if self.limit < s.max_inflight:
            log.info(
                "%s:%s: at most %d QoS 1 publishes in flight (the broker's receive maximum)",
                s.host, s.port, self.limit,
            )  # fmt: skip
        sock = self.client._connection._transport.get_extra_info("socket")
        if sock is not None:  # asyncio sets it too; say so here, where it matters
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def up(self) -> bool:
        if self.lost.is_set() or self.client._connection is None:  # lost, or not yet connected
            return False
        return bool(self.client.is_connected)

    def publish(self, msg: Outgoing) -> int:
        if not self.up:
            raise NotConnected(f"publish to {msg.topic} failed: not connected")
        mid, _ = self.client._connection.publish(_message(msg))
        return int(mid or 0)

    async def publish_acked(self, msg: Outgoing) -> int:
        """Publish at QoS 1 and return the PUBACK reason code; `NotConnected` if the
        connection drops first (the PUBACK will never come on a new one)."""
        mid = self.publish(msg)
        future = self.pending.get(mid)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self.pending[mid] = future
        try:
            return await future
        finally:
            if self.pending.get(mid) is future:
                del self.pending[mid]

    async def subscribe(self, topic_filter: str, qos: int) -> tuple[int, ...]:
        mid = self.client.subscribe(topic_filter, qos)
        return await self._acked(self.suback, mid, f"subscribing to {topic_filter!r}")

    async def unsubscribe(self, topic_filter: str) -> tuple[int, ...]:
        mid = self.client.unsubscribe(topic_filter)
        return await self._acked(self.unsuback, mid, f"unsubscribing from {topic_filter!r}")

    async def _acked(
        self, waiting: dict[int, asyncio.Future[tuple[int, ...]]], mid: int, what: str
    ) -> tuple[int, ...]:
        """The reason codes of the SUBACK or UNSUBACK of packet `mid`."""
        future = asyncio.get_running_loop().create_future()
        waiting[mid] = future
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({future, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            waiting.pop(mid, None)
        if not future.done():
            raise NotConnected(f"connection lost while {what}")
        codes: tuple[int, ...] = future.result()
        return codes

    def ack(self, mid: int) -> None:
        if self.up:
            self.client._connection.send_command_with_mid(MQTTCommands.PUBACK, mid, False)

    def reading(self, on: bool) -> None:
        """Pause or resume reading the socket: the broker holds what the handler cannot take."""
        connection = self.client._connection
        transport = getattr(connection, "_transport", None)
        if transport is not None and not transport.is_closing():
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()

    async def close(self) -> None:
        code = DISCONNECT_WITH_WILL if self.owner._will_on_close else 0
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                await self.client.disconnect(reason_code=code)
        except (TimeoutError, OSError, RuntimeError, AttributeError) as exc:
            log.debug("MQTT disconnect: %s", exc)

    # ---------------------------------------------------------------- gmqtt callbacks

    def _on_disconnect(self, *_: Any) -> None:
        # one client per connection: mark it done, so the reconnect gmqtt has just scheduled
        # returns at once (instead of logging that it may not retry)
        self.client._is_active = False
        self.lost.set()
        # fail the PUBACK waits here, not when the supervisor notices: the supervisor itself
        # waits on them while it drains the outbox or runs on-connect hooks
        for future in self.pending.values():
            if not future.done():
                future.set_exception(NotConnected("connection lost before the PUBACK"))

    def _on_suback(self, _client: Any, mid: int, codes: tuple[int, ...], _props: Any) -> None:
        future = self.suback.get(mid)
        if future is not None and not future.done():
            future.set_result(tuple(codes))

    def _on_unsuback(self, _client: Any, mid: int, codes: tuple[int, ...]) -> None:
        future = self.unsuback.get(mid)
        if future is not None and not future.done():
            future.set_result(tuple(codes))

    def _on_puback(self, _cmd: int, packet: bytes) -> None:
        (mid,) = struct.unpack("!H", packet[:2])
        code = packet[2] if len(packet) > 2 else 0  # v5: absent means success
        self._handler.id_generator.free_id(mid)
        future = self.pending.get(mid)
        if future is None:  # acked before the publisher registered: keep the verdict for it
            future = asyncio.get_running_loop().create_future()
            self.pending[mid] = future
        if not future.done():
            future.set_result(code)

    def _on_qos0(self, _c: Any, topic: str, payload: bytes, qos: int, props: Any) -> None:
        self.owner._arrived(self.number, topic, payload, qos, 0, props)

    def _on_qos1(self, mid: int, payload: bytes, topic: str, props: Any) -> None:
        if not self.owner._manual_ack:
            self._handler._send_puback(mid)
        self.owner._arrived(self.number, topic, payload, 1, mid, props)


class MqttConnection:
    """A supervised MQTT v5 connection. Run `run()` as a task; cancel it to disconnect."""

    def __init__(
        self,
        settings: BrokerSettings,
        handler: Handler | None = None,
        *,
        will: Will | Callable[[], Will] | None = None,
        manual_ack: bool = False,
        will_on_close: bool = False,
    ) -> None:
        """`will` may be a function: each connection then gets the will it returns. With
        `will_on_close` a clean close sends the will too (Sparkplug's NDEATH on a stop)."""
        self.settings = settings
        self._handler = handler
        self._will = will
        self._will_on_close = will_on_close
        self._manual_ack = manual_ack
        self._subscriptions: dict[str, int] = {}
        self._on_connect: list[Hook] = []
        self._session: _Session | None = None
        self._ready = asyncio.Event()
        self._outbox: deque[Outgoing] = deque()
        self._backoff = Backoff(settings.reconnect_initial_s, settings.reconnect_max_s)
        self._inbox: list[Received] = []
        self._inbox_ready = asyncio.Event()
        self._since_yield = 0
        self._paused: _Session | None = None
        self.stats = ConnectionStats()

    # ------------------------------------------------------------------ configuration

    def on_connect(self, hook: Hook) -> None:
        """Run `hook` after each (re)connect: subscriptions are back, the buffer not yet drained."""
        self._on_connect.append(hook)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again on every reconnect."""
        self._subscriptions[topic_filter] = qos
        if self._session is not None and self._ready.is_set():
            await self._subscribe(self._session, topic_filter, qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Forget `topic_filter` (not subscribed again on reconnect) and unsubscribe now if
        connected; `ProtocolError` if the broker refuses (a filter never subscribed is not)."""
        if self._subscriptions.pop(topic_filter, None) is None:
            return
        session = self._session
        if session is None or not self._ready.is_set():
            return  # the next connection will not subscribe it (a clean session has none)
        for code in await session.unsubscribe(topic_filter):
            if code >= 0x80:
                raise ProtocolError(f"broker refused to unsubscribe {topic_filter!r}: 0x{code:02x}")

    @property
    def subscriptions(self) -> list[str]:
        """The filters this connection subscribes (and subscribes again on reconnect)."""
        return list(self._subscriptions)

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    @property
    def inflight_limit(self) -> int:
        """QoS 1 publishes that may await their PUBACK at once on the current connection."""
        session = self._session
        return self.settings.max_inflight if session is None else session.limit

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
        expiry_s: int | None = None,
    ) -> PublishResult:
        """Publish and return the broker's verdict (QoS 1: the PUBACK reason code).

        While the broker is away the message is buffered (`queued=True`), unless `buffer` is
        False, in which case `NotConnected` is raised so the caller keeps ownership of it.
        `priority` messages (status) go out from on-connect hooks, ahead of the buffer.
        """
        msg = Outgoing(
            topic, payload, content_type, qos, retain, response_topic, correlation_data, expiry_s
        )
        session = self._session
        if session is None or not (self._ready.is_set() or priority):
            return self._buffer_or_raise(msg, buffer)
        try:
            return await self._send(session, msg)
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
        return _QUEUED

    async def _send(self, session: _Session, msg: Outgoing) -> PublishResult:
        if msg.qos == 0:
            session.publish(msg)
            self.stats.published += 1
            self._since_yield += 1
            if self._since_yield >= BURST_YIELD:  # a tight publisher must not starve the loop
                self._since_yield = 0
                await asyncio.sleep(0)
            return _SUCCESS
        async with session.inflight:
            code = await session.publish_acked(msg)
        if code < 0x80:
            self.stats.published += 1
            return _SUCCESS if code == 0 else PublishResult(code, _REASONS.get(code, "Success"))
        result = PublishResult(code, _REASONS.get(code, "Refused"))
        self.stats.publish_failures += 1
        log.warning("broker refused publish to %s: %s (0x%02x)", msg.topic, result.reason, code)
        return result

    def ack(self, message: Received) -> None:
        """Acknowledge a QoS 1 message received with `manual_ack`; a stale one is ignored."""
        session = self._session
        if not self._manual_ack or message.qos == 0 or session is None:
            return
        if message.connection != session.number:
            return  # that connection is gone: the broker will deliver the message again
        session.ack(message.mid)

    # ------------------------------------------------------------------ connection loop

    async def run(self) -> None:
        """Connect, serve, and reconnect for ever; cancel the task to disconnect cleanly."""
        dispatcher = asyncio.create_task(self._dispatch_loop(), name="mqtt_dispatch")
        try:
            while True:
                try:
                    await self._serve_once()
                except MQTTConnectError as exc:
                    if exc._code in _BAD_CREDENTIALS:
                        raise ProtocolError(
                            f"broker {self.settings.host}:{self.settings.port} refused the "
                            f"credentials ({exc}); not retrying"
                        ) from None
                    raise_if_cancelled()
                    self._lost(exc)
                except (NotConnected, OSError, TimeoutError) as exc:
                    raise_if_cancelled()
                    self._lost(exc)
                await asyncio.sleep(self._backoff.next_delay())
        finally:
            dispatcher.cancel()
            await asyncio.gather(dispatcher, return_exceptions=True)

    def _lost(self, exc: BaseException) -> None:
        self.stats.last_error = connect_error(exc, self.settings.host, self.settings.port)
        if self._ready.is_set() or self._backoff.attempts == 0:
            log.warning(
                "MQTT connection to %s:%s lost: %s; reconnecting",
                self.settings.host,
                self.settings.port,
                self.stats.last_error,
            )
        self._ready.clear()
        self._session = None

    async def _serve_once(self) -> None:
        number = self.stats.connects + 1
        session = _Session(self, number)
        # before the CONNACK: a persistent session's queued messages may reach the handler (and
        # its acks come back here) before connect() returns
        self._session = session
        try:
            await session.connect()
            self.stats.connects = number
            if number > 1:
                self.stats.reconnects += 1
            for topic_filter, qos in list(self._subscriptions.items()):
                await self._subscribe(session, topic_filter, qos)
            for hook in self._on_connect:
                await hook()
            await self._drain(session)
            self._ready.set()
            self._backoff.reset()
            log.info("MQTT connected to %s:%s", self.settings.host, self.settings.port)
            await session.lost.wait()
            raise NotConnected("the broker closed the connection")
        finally:
            self._ready.clear()
            if self._session is session:
                self._session = None
            await session.close()

    async def _subscribe(self, session: _Session, topic_filter: str, qos: int) -> None:
        for code in await session.subscribe(topic_filter, qos):
            if code >= 0x80:
                raise ProtocolError(
                    f"broker refused subscription to {topic_filter!r}: 0x{code:02x}"
                )

    async def _drain(self, session: _Session) -> None:
        while self._outbox:
            msg = self._outbox.popleft()
            try:
                await self._send(session, msg)
            except NotConnected:
                self._outbox.appendleft(msg)
                raise

    # ------------------------------------------------------------------ receiving

    def _arrived(
        self, number: int, topic: str, payload: bytes, qos: int, mid: int, props: Any
    ) -> None:
        """Called by gmqtt for each packet of a socket read: collect, wake the dispatcher once."""
        if len(props) > 2:  # gmqtt always adds dup and retain
            received = Received(
                topic,
                payload,
                _first(props, "content_type"),
                qos,
                bool(props["retain"]),
                mid,
                _first(props, "response_topic"),
                _first(props, "correlation_data"),
                number,
            )
        else:
            received = Received(
                topic, payload, None, qos, bool(props["retain"]), mid, None, None, number
            )
        inbox = self._inbox
        inbox.append(received)
        if len(inbox) == 1:
            self._inbox_ready.set()
        elif len(inbox) == INBOX_HIGH and self._session is not None:
            self._paused = self._session
            self._session.reading(False)

    async def _dispatch_loop(self) -> None:
        while True:
            await self._inbox_ready.wait()
            self._inbox_ready.clear()
            burst, self._inbox = self._inbox, []
            if self._paused is not None:  # the burst is ours now: let the next one come in
                self._paused.reading(True)
                self._paused = None
            self.stats.received += len(burst)
            if self._handler is None:
                continue
            for n, received in enumerate(burst, 1):
                await self._dispatch(received)
                if n % DISPATCH_YIELD == 0:  # a coalescing tick must not wait for a whole burst
                    await asyncio.sleep(0)

    async def _dispatch(self, received: Received) -> None:
        assert self._handler is not None
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
