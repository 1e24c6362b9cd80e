"""Where the forwarder delivers: the common interface, and the MQTT and HTTP sinks.

`send(rows)` returns once the sink confirmed every row (PUBACK with a success reason code,
HTTP 2xx, a commit), or raises `SinkError` saying how many of the first rows were confirmed.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from services.forwarder import records
from services.forwarder.config import HttpSink as HttpConfig
from services.forwarder.config import MqttSink as MqttConfig
from services.forwarder.queue import Row
from shared import codec
from shared.codec import Encoding
from shared.config import ServiceConfig, secret
from shared.errors import EdgefleetError
from shared.messages import SCHEMA_VERSION
from shared.mqtt import MqttConnection, NotConnected

Loop = Callable[[], Coroutine[Any, Any, None]]


# HTTP answers that refuse the body itself; others (401, 404, 5xx, 429) are the endpoint's
# state or configuration, retried for as long as it takes.
HTTP_REFUSED = {400, 413, 415, 422}


class SinkError(EdgefleetError):
    """A send that did not complete. `confirmed`: the first rows that did arrive. `refused`:
    the receiver answered and said no to the next row (`whole_batch`: to the batch, without
    saying which row), as opposed to being unreachable; `permanent`: no retry will change it."""

    def __init__(
        self,
        reason: str,
        confirmed: int = 0,
        *,
        refused: bool = False,
        permanent: bool = False,
        whole_batch: bool = False,
    ) -> None:
        super().__init__(reason)
        self.confirmed = confirmed
        self.refused = refused
        self.permanent = permanent
        self.whole_batch = whole_batch


class Sink(Protocol):
    name: str

    async def start(self) -> None: ...
    async def ready(self) -> None: ...  # returns when sending can be tried
    async def send(self, rows: list[Row]) -> None: ...
    async def close(self) -> None: ...
    def loops(self) -> dict[str, Loop]: ...
    def status(self) -> dict[str, Any]: ...


class MqttSink:
    """Publishes each queued message unchanged (payload, content type, topic) at QoS 1."""

    def __init__(self, cfg: MqttConfig, service: ServiceConfig) -> None:
        self.name = cfg.name
        self.refused_at_once = frozenset(cfg.refused_at_once)
        self.connection = MqttConnection(
            cfg.broker.settings(
                cfg.client_id or f"{service.site}-{service.instance}-{cfg.name}",
                service.timings,
                max_inflight=cfg.batch_size,  # a whole batch in flight: publishes keep their order
            )
        )

    async def start(self) -> None:
        pass

    async def ready(self) -> None:
        await self.connection.wait_connected()

    def loops(self) -> dict[str, Loop]:
        return {f"{self.name}_mqtt_loop": self.connection.run}

    async def send(self, rows: list[Row]) -> None:
        outcomes = await asyncio.gather(
            *(
                self.connection.publish(
                    r.topic, r.payload, content_type=r.content_type, qos=1, buffer=False
                )
                for r in rows
            ),
            return_exceptions=True,
        )
        for i, (row, outcome) in enumerate(zip(rows, outcomes, strict=True)):
            if isinstance(outcome, NotConnected):
                raise SinkError(f"{self.name}: {outcome}", i)
            if isinstance(outcome, BaseException):
                raise outcome
            if not outcome.ok:
                raise SinkError(
                    f"{self.name}: broker refused {row.topic}: {outcome.reason} "
                    f"(0x{outcome.reason_code:02x})",
                    i,
                    refused=True,
                    permanent=outcome.reason_code in self.refused_at_once,
                )

    async def close(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        stats = self.connection.stats
        connected = self.connection.connected
        return {
            "connected": connected,
            "reconnects": stats.reconnects,
            "error": "" if connected else stats.last_error,  # e.g. a CA that does not match
        }


class HttpSink:
    """POSTs `{"v", "kind": "forward", "site", "instance", "messages": [{topic, body}]}`."""

    def __init__(self, cfg: HttpConfig, service: ServiceConfig) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.site, self.instance = service.site, service.instance
        self.headers = {"Content-Type": "application/json", **cfg.headers}
        token = secret(f"sinks.{cfg.name}.token", cfg.token_env)
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.context = (
            ssl.create_default_context(cafile=str(cfg.ca_file))
            if cfg.ca_file
            else ssl.create_default_context()
        )
        self.posts = 0

    async def start(self) -> None:
        pass

    async def ready(self) -> None:
        pass

    def loops(self) -> dict[str, Loop]:
        return {}

    def _body(self, rows: list[Row]) -> bytes:
        messages = [{"topic": r.topic, "body": records.json_body(records.decode(r))} for r in rows]
        body = {
            "v": SCHEMA_VERSION,
            "kind": "forward",
            "site": self.site,
            "instance": self.instance,
            "messages": messages,
        }
        payload, _ = codec.encode(body, Encoding.JSON)
        return payload

    def _post(self, rows: list[Row]) -> None:
        request = urllib.request.Request(
            self.cfg.url, data=self._body(rows), headers=self.headers, method="POST"
        )
        https = self.cfg.url.startswith("https://")
        try:
            with urllib.request.urlopen(
                request, timeout=self.cfg.timeout_s, context=self.context if https else None
            ) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            refused = exc.code in HTTP_REFUSED
            raise SinkError(
                f"{self.name}: {self.cfg.url} answered {exc.code} {exc.reason}",
                refused=refused,
                permanent=refused,
                whole_batch=refused,
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise SinkError(f"{self.name}: POST to {self.cfg.url} failed: {exc}") from None
        if not 200 <= status < 300:
            raise SinkError(f"{self.name}: {self.cfg.url} answered {status}")

    async def send(self, rows: list[Row]) -> None:
        await asyncio.to_thread(self._post, rows)
        self.posts += 1

    async def close(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"posts": self.posts}
