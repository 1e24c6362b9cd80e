"""Writes through the adapter that owns the device: a WriteRequest on `cmd/{source}` with the MQTT
v5 response topic `reply/{instance}` and the request id as correlation data; the answer must come
within the timeout and read back the value written.

A request is never buffered while the broker is away: a write that goes out late is worse than a
write that fails now and says so.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Any

from shared import codec
from shared.messages import WriteRequest, WriteResponse
from shared.mqtt import NotConnected, Received
from shared.runtime import Runtime


@dataclass
class Outcome:
    ok: bool
    request_id: str
    readback: Any = None
    error: str | None = None
    elapsed_ms: float = 0.0


def same(value: Any, readback: Any) -> bool:
    try:
        return float(value) == float(readback)
    except (TypeError, ValueError):
        return False


class Requester:
    def __init__(self, rt: Runtime, timeout_s: float) -> None:
        self.rt, self.timeout_s = rt, timeout_s
        self.reply_topic = rt.topics.reply(rt.instance)
        self._pending: dict[bytes, asyncio.Future[WriteResponse]] = {}
        self._ids = itertools.count(1)
        self._run = uuid.uuid4().hex[:8]  # ids stay unique across restarts of the instance
        self.late = 0  # answers that came after their timeout

    async def start(self) -> None:
        await self.rt.subscribe(self.reply_topic, self.on_reply)

    async def on_reply(self, message: Received) -> None:
        response = WriteResponse.from_wire(codec.decode(message.payload, message.content_type))
        key = message.correlation_data or response.request_id.encode()
        future = self._pending.pop(key, None)
        if future is None or future.done():
            self.late += 1
            return
        future.set_result(response)

    async def write(self, source: str, target: dict[str, Any], value: Any) -> Outcome:
        request_id = f"{self.rt.instance}-{self._run}-{next(self._ids)}"
        key = request_id.encode()
        request = WriteRequest(request_id=request_id, target=target, value=value)
        payload, content_type = codec.encode(request.to_wire())
        future: asyncio.Future[WriteResponse] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        start = time.perf_counter()
        try:
            result = await self.rt.mqtt.publish(
                self.rt.topics.cmd(source),
                payload,
                content_type=content_type,
                qos=1,
                response_topic=self.reply_topic,
                correlation_data=key,
                buffer=False,
            )
            if not result.ok:
                return Outcome(False, request_id, error=f"broker refused: {result.reason}")
            response = await asyncio.wait_for(future, self.timeout_s)
        except NotConnected as exc:
            return Outcome(False, request_id, error=f"not sent: {exc}")
        except TimeoutError:
            return Outcome(
                False, request_id, error=f"no answer from {source} within {self.timeout_s:g} s"
            )
        finally:
            self._pending.pop(key, None)
        elapsed = (time.perf_counter() - start) * 1000
        if not response.ok:
            return Outcome(False, request_id, error=f"{source} refused: {response.error}")
        if response.readback is None:
            return Outcome(False, request_id, None, f"{source} gave no read-back", elapsed)
        if not same(value, response.readback):
            error = f"read back {response.readback!r}, wrote {value!r}"
            return Outcome(False, request_id, response.readback, error, elapsed)
        return Outcome(True, request_id, response.readback, None, elapsed)
