"""`edgefleet shadow promote|drop --site S --instance I`: act on an inference instance's shadow.

This is the one-site form (the broker of that site). Across the fleet: `edgefleet shadow
report|stop FLOW` and `edgefleet promote FLOW` (edgefleet/fleet/shadow_cli.py).

Both publish a retained ConfigUpdate on `ef/{site}/config/{instance}` with the next revision:
`promote` makes the shadow model the live one (and runs no shadow), `drop` stops the shadow.
The running state is read from the instance's retained status (its revision and the shadow it
runs) and from the retained config, whose other keys are kept. With `--wait`, the command waits
for the instance to report the new revision and says which model is live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from edgefleet.cli_errors import cli_errors
from shared import codec
from shared.errors import EdgefleetError, PayloadError
from shared.health import InferenceHealth, health_of
from shared.messages import ConfigUpdate, Status
from shared.mqtt import BrokerSettings, MqttConnection, Received, Subscription
from shared.topics import DEFAULT_PREFIX, Topics

RETAINED_SETTLE_S = 0.3
MODEL_KEYS = ("path", "ref", "name", "version", "input")


class ShadowError(EdgefleetError):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet shadow", description=__doc__)
    p.add_argument("action", choices=["promote", "drop"])
    p.add_argument("--site", required=True)
    p.add_argument("--instance", required=True, help="the inference instance, e.g. inference-f1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to find the instance")
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for the instance to apply it; 0: do not wait",
    )
    return p


def new_config(action: str, inference: InferenceHealth, retained: dict[str, Any]) -> dict[str, Any]:
    """The config keys to publish: the retained config's, with the shadow promoted or dropped."""
    config = dict(retained)
    config["shadow"] = None
    if action == "drop":
        return config
    if inference.shadow is None:
        raise ShadowError("the instance runs no shadow model: nothing to promote")
    spec = inference.shadow.spec
    config["model"] = {k: spec[k] for k in MODEL_KEYS if spec.get(k) is not None}
    if spec.get("outputs") is not None:
        config["outputs"] = spec["outputs"]
    return config


async def run(args: argparse.Namespace) -> int:
    topics = Topics(args.site, args.prefix)
    status_topic, config_topic = topics.status(args.instance), topics.config(args.instance)
    sub = Subscription()
    conn = MqttConnection(BrokerSettings(host=args.host, port=args.port), sub.handler)
    await conn.subscribe(config_topic)  # first: its retained message arrives before the status
    await conn.subscribe(status_topic)
    runner = asyncio.create_task(conn.run(), name="mqtt_loop")
    try:
        retained, status = await _current(sub, config_topic, status_topic, args.timeout)
        inference = InferenceHealth.of(status) or InferenceHealth()
        running = health_of(status).revision
        revision = max(running, int(retained.get("revision", 0))) + 1
        update = ConfigUpdate(
            instance=args.instance,
            revision=revision,
            config=new_config(args.action, inference, retained.get("config", {})),
        )
        payload, content_type = codec.encode(update.to_wire())
        result = await conn.publish(
            config_topic, payload, content_type=content_type, qos=1, retain=True
        )
        if not result.ok:
            raise ShadowError(f"the broker refused the config update: {result.reason}")
        print(f"{args.action}: published config revision {revision} on {config_topic}")
        if args.wait > 0:
            return await _applied(sub, status_topic, revision, inference.swaps.refused, args.wait)
        return 0
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def _current(
    sub: Subscription, config_topic: str, status_topic: str, timeout: float
) -> tuple[dict[str, Any], Status]:
    retained: dict[str, Any] = {}
    status: Status | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await sub.queue.get()
                body = _decode(message)
                if message.topic == config_topic and body:
                    retained = body
                elif message.topic == status_topic and body:
                    status = Status.from_wire(body)
                    if status.state != "online":
                        raise ShadowError(f"instance is {status.state}, not online")
                    break
    except TimeoutError:
        raise ShadowError(f"no status on {status_topic} within {timeout:g} s") from None
    with contextlib.suppress(TimeoutError):  # a retained config sent after the status
        async with asyncio.timeout(RETAINED_SETTLE_S):
            while True:
                message = await sub.queue.get()
                if message.topic == config_topic and (body := _decode(message)):
                    retained = body
    assert status is not None
    return retained, status


async def _applied(
    sub: Subscription, status_topic: str, revision: int, refused_before: int, wait: float
) -> int:
    """Wait for the instance to have handled `revision` (applied or refused); say which."""
    inference = InferenceHealth()
    try:
        async with asyncio.timeout(wait):
            while inference.revision < revision:
                message = await sub.queue.get()
                if message.topic == status_topic and (body := _decode(message)):
                    with contextlib.suppress(PayloadError):  # not a status: keep waiting
                        inference = InferenceHealth.of(Status.from_wire(body)) or inference
    except TimeoutError:
        print(f"the instance did not apply revision {revision} within {wait:g} s", file=sys.stderr)
        return 1
    model, shadow = inference.model, inference.shadow
    print(
        f"live model: {model.name} {model.version} sha256 "
        f"{str(model.sha256)[:12]}; shadow: {shadow.origin if shadow else 'none'}"
    )
    if inference.swaps.refused > refused_before:
        print(f"refused: {inference.swaps.last_error}", file=sys.stderr)
        return 1
    return 0


def _decode(message: Received) -> dict[str, Any] | None:
    if not message.payload:
        return None
    try:
        body = codec.decode(message.payload, message.content_type)
    except PayloadError:
        return None
    return body if isinstance(body, dict) else None


@cli_errors("edgefleet shadow")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return asyncio.run(run(args))
