"""`edgefleet tap FILTER`: every message decoded as one JSON line, the readable mosquitto_sub."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

from shared import codec
from shared.errors import PayloadError
from shared.messages import iso, now_ns
from shared.mqtt import BrokerSettings, MqttConnection, Received, Subscription


def describe(message: Received, received_ns: int) -> dict[str, Any]:
    """One message as a JSON-able dict: topic, receive time, content type, decoded payload."""
    line: dict[str, Any] = {
        "topic": message.topic,
        "received": iso(received_ns),
        "content_type": message.content_type,
        "retain": message.retain,
    }
    try:
        line["payload"] = codec.to_jsonable(codec.decode(message.payload, message.content_type))
    except PayloadError as exc:
        try:
            line["text"] = message.payload.decode()
        except UnicodeDecodeError:
            line["error"] = str(exc)
            line["hex"] = message.payload[:256].hex()
    return line


async def tap(
    topic_filter: str,
    settings: BrokerSettings,
    *,
    count: int | None = None,
    timeout: float | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print messages until `count` were seen or `timeout` passed (or forever); return the count."""
    subscription = Subscription()
    connection = MqttConnection(settings, subscription.handler)
    await connection.subscribe(topic_filter, qos=1)
    runner = asyncio.create_task(connection.run(), name="mqtt_loop")
    seen = 0
    try:
        async with asyncio.timeout(timeout):
            while count is None or seen < count:
                message = await subscription.queue.get()
                out.write(json.dumps(describe(message, now_ns()), ensure_ascii=False) + "\n")
                out.flush()
                seen += 1
    except TimeoutError:
        pass
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    return seen
