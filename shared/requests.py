"""MQTT v5 request/response, both sides, in one place.

A request carries the MQTT v5 response topic and correlation data; the answer goes to that topic
with the same correlation data and in the request's own encoding (a JSON request gets JSON back,
so `mosquitto_pub`/`mosquitto_sub` users and other systems can speak it).

Server: `RequestServer(rt, topic_filter, parse, handler, refuse)` subscribes through the service
runtime (with `concurrent`, each request is handled in a task of the runtime's TaskGroup, for a
handler that waits on the service's own loop: the dispatch loop must stay free for the answers
that loop waits for); `parse` turns the decoded body into a typed request (raising
`PayloadError`), `handler` answers it, `refuse` builds the answer for what could not be served.
What is malformed is also reported on the errors topic (it is rejected input); a handler's
`EdgefleetError` is an answer ("refused"), anything else an internal error, logged with its
traceback and reported on the errors topic. Counters for the status. `serve_writes` is the
adapters' write server on top.

Who asks: an MQTT request says nothing trustworthy about its sender, but its response topic
says who can read the answer. With `replies_under`, a server answers only on topics under that
root (a request asking for its answer anywhere else is not served: counted `misrouted`, reported
with the code `reply_topic_refused`), and `asking_site` names the site whose agent alone may
read the answer (the cloud broker's ACL); what the request claims beyond that is not believed.

Client: `Requester` sends requests and routes answers back by correlation data, on any
`MqttConnection` (a service's runtime or a command-line tool's own connection); `requester()`
opens such a connection for a command-line tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shared import codec
from shared.codec import Encoding
from shared.errors import EdgefleetError, PayloadError, ProtocolError
from shared.messages import Message, WriteRequest, WriteResponse
from shared.mqtt import BrokerSettings, MqttConnection, NotConnected, Received
from shared.runtime import Runtime
from shared.topics import DEFAULT_PREFIX, agent_site_of

log = logging.getLogger(__name__)

Req = TypeVar("Req")


def asking_site(message: Received, prefix: str = DEFAULT_PREFIX) -> str | None:
    """The site a request comes from, by its response topic: an answer on
    `{prefix}/fleet/reply/{site}-agent` can be read by that site only, whatever the request
    claims. None for a request whose answer goes elsewhere (an operator's tool)."""
    return agent_site_of(message.response_topic or "", prefix)


def encoding_of(message: Received) -> Encoding:
    """The encoding an answer to `message` is written in: the request's own."""
    return Encoding.JSON if message.content_type == codec.JSON else Encoding.MSGPACK


@dataclass
class RequestStats:
    served: int = 0  # answered with the handler's result
    refused: int = 0  # the handler said no (an EdgefleetError): answered with the reason
    malformed: int = 0  # could not be decoded or parsed: answered when possible, reported
    failed: int = 0  # the handler raised something unexpected: answered "internal error"
    unanswerable: int = 0  # no response topic: nobody to tell
    misrouted: int = 0  # a response topic outside `replies_under`: not served, reported

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class RequestServer(Generic[Req]):
    def __init__(
        self,
        rt: Runtime,
        topic_filter: str,
        parse: Callable[[Any], Req],
        handler: Callable[[Req, Received], Awaitable[Message]],
        refuse: Callable[[Exception, Req | None], Message],
        *,
        concurrent: bool = False,
        replies_under: str | None = None,
    ) -> None:
        self.rt, self.topic_filter = rt, topic_filter
        self.parse, self.handler, self.refuse = parse, handler, refuse
        self.concurrent = concurrent
        self.replies_under = replies_under
        self.stats = RequestStats()

    async def start(self) -> None:
        await self.rt.subscribe(
            self.topic_filter, self.on_request_in_task if self.concurrent else self.on_request
        )

    async def on_request_in_task(self, message: Received) -> None:
        self.rt.spawn(lambda: self.on_request(message), f"request {message.topic}")

    async def on_request(self, message: Received) -> None:
        reply = message.response_topic
        if self.replies_under is not None and reply and not reply.startswith(self.replies_under):
            # answering there would let a client route an answer into a tree it may read
            # (a site's own `desired`): nothing is served, the refusal is on the errors topic
            self.stats.misrouted += 1
            self.rt.reject(
                f"reply_topic_refused: answers go only under {self.replies_under}, "
                f"not to {reply!r}",
                message,
            )
            return
        request: Req | None = None
        try:
            request = self.parse(codec.decode(message.payload, message.content_type))
            answer = await self.handler(request, message)
            self.stats.served += 1
        except PayloadError as exc:
            self.stats.malformed += 1
            self.rt.reject(str(exc), message)
            answer = self.refuse(exc, request)
        except EdgefleetError as exc:
            self.stats.refused += 1
            log.warning("request on %s refused: %s", message.topic, exc)
            answer = self.refuse(exc, request)
        except Exception as exc:
            self.stats.failed += 1
            log.exception("request handler for %s failed on %s", self.topic_filter, message.topic)
            self.rt.errors.error(f"internal error: {type(exc).__name__}: {exc}", message)
            answer = self.refuse(exc, request)
        await self.answer(message, answer)

    async def answer(self, message: Received, answer: Message) -> None:
        if not message.response_topic:
            self.stats.unanswerable += 1
            return
        await self.rt.publish(
            message.response_topic,
            answer,
            encoding=encoding_of(message),
            qos=1,
            correlation_data=message.correlation_data,
        )


async def serve_requests(
    rt: Runtime,
    topic_filter: str,
    parse: Callable[[Any], Req],
    handler: Callable[[Req, Received], Awaitable[Message]],
    refuse: Callable[[Exception, Req | None], Message],
    *,
    concurrent: bool = False,
) -> RequestServer[Req]:
    """Answer every request on `topic_filter`; returns the server (its `stats` for the status)."""
    server = RequestServer(rt, topic_filter, parse, handler, refuse, concurrent=concurrent)
    await server.start()
    return server


Readback = float | int | bool | None


def refuse_write(exc: Exception, request: WriteRequest | None) -> WriteResponse:
    """The answer to a write that was not carried out: the reason as the error."""
    expected = isinstance(exc, EdgefleetError)
    error = str(exc) if expected else f"internal error: {type(exc).__name__}: {exc}"
    return WriteResponse(request_id=request.request_id if request else "", ok=False, error=error)


async def serve_writes(
    rt: Runtime, topic_filter: str, write: Callable[[WriteRequest], Awaitable[Readback]]
) -> RequestServer[WriteRequest]:
    """An adapter's write server: `write` carries out one `WriteRequest` through the device
    session and returns the value read back (raising `Refused` for what it will not write);
    the answer is a `WriteResponse`. `stats.served` counts the writes done."""

    async def handle(request: WriteRequest, message: Received) -> WriteResponse:
        readback = await write(request)
        return WriteResponse(request_id=request.request_id, ok=True, readback=readback)

    return await serve_requests(rt, topic_filter, WriteRequest.from_wire, handle, refuse_write)


class RequestTimeout(ProtocolError):
    """No answer came within the timeout."""


class Requester:
    """Sends requests on one connection and hands each answer to the request that waits for it.

    Route the reply topic's messages to `on_reply` (a runtime subscription, or the connection's
    own handler). Requests are never buffered while the broker is away: a request that goes out
    late is worse than one that fails now and says so."""

    def __init__(self, connection: MqttConnection, reply_topic: str, name: str = "") -> None:
        self.connection, self.reply_topic = connection, reply_topic
        self._pending: dict[bytes, asyncio.Future[Received]] = {}
        self._ids = itertools.count(1)
        self._run = f"{name + '-' if name else ''}{uuid.uuid4().hex[:8]}"  # unique across runs
        self.late = 0  # answers that came after their request gave up

    def new_id(self) -> str:
        return f"{self._run}-{next(self._ids)}"

    async def on_reply(self, message: Received) -> None:
        future = self._pending.pop(message.correlation_data or b"", None)
        if future is None or future.done():
            self.late += 1
            return
        future.set_result(message)

    async def request(
        self,
        topic: str,
        body: Message | dict[str, Any],
        *,
        timeout: float,
        encoding: Encoding = Encoding.MSGPACK,
        request_id: str | None = None,
    ) -> Any:
        """Publish `body` on `topic` and return the decoded answer (a plain dict or list).

        Raises `NotConnected`, `ProtocolError` (the broker refused the publish) or
        `RequestTimeout`."""
        key = (request_id or self.new_id()).encode()
        wire = body.to_wire(encoding) if isinstance(body, Message) else body
        payload, content_type = codec.encode(wire, encoding)
        future: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            result = await self.connection.publish(
                topic,
                payload,
                content_type=content_type,
                qos=1,
                response_topic=self.reply_topic,
                correlation_data=key,
                buffer=False,
            )
            if not result.ok:
                raise ProtocolError(f"the broker refused the request on {topic}: {result.reason}")
            try:
                message = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise RequestTimeout(f"no answer on {topic} within {timeout:g} s") from None
        finally:
            self._pending.pop(key, None)
        return codec.decode(message.payload, message.content_type)


@contextlib.asynccontextmanager
async def requester(
    settings: BrokerSettings, reply_topic: str, *, connect_timeout: float = 10.0
) -> AsyncIterator[Requester]:
    """A connection of its own with a `Requester` on it, for a command-line tool.

    Raises `NotConnected` when the broker cannot be reached within `connect_timeout` (with the
    last attempt's error: a refused connection, a certificate the CA does not vouch for), and
    `ProtocolError` at once when the broker refuses the credentials."""
    holder: list[Requester] = []

    async def route(message: Received) -> None:
        await holder[0].on_reply(message)

    connection = MqttConnection(settings, route)
    holder.append(Requester(connection, reply_topic, settings.client_id))
    await connection.subscribe(reply_topic)
    task = asyncio.create_task(connection.run(), name="requester_mqtt_loop")
    try:
        connected = asyncio.ensure_future(connection.wait_connected())
        try:
            await asyncio.wait(
                {connected, task}, timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            connected.cancel()
        if task.done():
            task.result()  # the connection gave up: bad credentials (ProtocolError)
        if not connection.connected:
            why = connection.stats.last_error
            raise NotConnected(
                f"broker {settings.host}:{settings.port} not reachable within "
                f"{connect_timeout:g} s" + (f": {why}" if why else "")
            )
        yield holder[0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
