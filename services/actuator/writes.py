"""Writes through the adapter that owns the device: a WriteRequest on `cmd/{source}` with the MQTT
v5 response topic `reply/{instance}` and the request id as correlation data (shared/requests.py);
the answer must come within the timeout and read back the value written.

A request is never buffered while the broker is away: a write that goes out late is worse than a
write that fails now and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from shared import requests
from shared.errors import PayloadError, ProtocolError
from shared.messages import WriteRequest, WriteResponse, WriteTarget
from shared.mqtt import NotConnected
from shared.requests import RequestTimeout
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
        # request ids `{instance}-{run}-{n}` stay unique across restarts of the instance
        self.requests = requests.Requester(rt.mqtt, self.reply_topic, rt.instance)

    @property
    def late(self) -> int:
        """Answers that came after their timeout."""
        return self.requests.late

    async def start(self) -> None:
        await self.rt.subscribe(self.reply_topic, self.requests.on_reply)

    async def write(self, source: str, target: WriteTarget, value: Any) -> Outcome:
        request_id = self.requests.new_id()
        request = WriteRequest(request_id=request_id, target=target, value=value)
        start = time.perf_counter()
        try:
            answer = await self.requests.request(
                self.rt.topics.cmd(source), request, timeout=self.timeout_s, request_id=request_id
            )
            response = WriteResponse.from_wire(answer)
        except NotConnected as exc:
            return Outcome(False, request_id, error=f"not sent: {exc}")
        except RequestTimeout:
            return Outcome(
                False, request_id, error=f"no answer from {source} within {self.timeout_s:g} s"
            )
        except PayloadError as exc:
            return Outcome(False, request_id, error=f"{source} answered: {exc}")
        except ProtocolError as exc:  # the broker refused the publish
            return Outcome(False, request_id, error=str(exc))
        elapsed = (time.perf_counter() - start) * 1000
        if not response.ok:
            return Outcome(False, request_id, error=f"{source} refused: {response.error}")
        if response.readback is None:
            return Outcome(False, request_id, None, f"{source} gave no read-back", elapsed)
        if not same(value, response.readback):
            error = f"read back {response.readback!r}, wrote {value!r}"
            return Outcome(False, request_id, response.readback, error, elapsed)
        return Outcome(True, request_id, response.readback, None, elapsed)
