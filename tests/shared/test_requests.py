"""Request/response on the real broker: both sides of shared/requests.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgefleet.broker import LocalBroker
from shared.codec import Encoding
from shared.config import ServiceConfig, validate
from shared.errors import EdgefleetError, PayloadError, Refused
from shared.messages import Message, PointTarget, RegisterTarget, WriteRequest, WriteTarget
from shared.mqtt import BrokerSettings, Received
from shared.requests import RequestTimeout, requester, serve_requests, serve_writes
from shared.runtime import Runtime
from shared.topics import Topics
from tests.helpers import Probe


class Ask(Message):
    n: int


class Answer(Message):
    ok: bool
    n: int | None = None
    error: str | None = None


def refuse(exc: Exception, request: Ask | None) -> Answer:
    return Answer(ok=False, error=f"{type(exc).__name__}: {exc}")


async def double(request: Ask, message: Received) -> Answer:
    if request.n < 0:
        raise EdgefleetError("n must not be negative")
    if request.n == 13:
        raise RuntimeError("unlucky")
    return Answer(ok=True, n=request.n * 2)


@pytest.fixture
async def served(base_config: dict[str, Any], site: str) -> Any:
    config = validate(ServiceConfig, {**base_config, "instance": "svc"}, "test")
    rt = Runtime("test", config)
    topics = Topics(site)
    server = await serve_requests(rt, topics.cmd("svc"), Ask.from_wire, double, refuse)
    task = asyncio.create_task(rt.serve())
    await rt.mqtt.wait_connected()
    yield rt, server, topics
    rt.stop.set()
    await asyncio.wait_for(task, 10)


async def test_answers_by_correlation_in_the_requests_encoding(
    served: Any, broker: LocalBroker
) -> None:
    rt, server, topics = served
    settings = BrokerSettings(host=broker.host, port=broker.port, client_id="cli-test")
    async with requester(settings, topics.reply("cli-test")) as req:
        answers = await asyncio.gather(
            *(req.request(topics.cmd("svc"), Ask(n=i), timeout=10) for i in range(12))
        )
        assert [a["n"] for a in answers] == [2 * i for i in range(12)]  # each to its own caller
        as_json = await req.request(topics.cmd("svc"), Ask(n=4), timeout=10, encoding=Encoding.JSON)
        assert as_json == {"v": 1, "ok": True, "n": 8}
        refused = await req.request(topics.cmd("svc"), Ask(n=-1), timeout=10)
        assert refused["ok"] is False and "negative" in refused["error"]
        failed = await req.request(topics.cmd("svc"), Ask(n=13), timeout=10)
        assert failed["ok"] is False and "unlucky" in failed["error"]
        malformed = await req.request(topics.cmd("svc"), {"v": 1, "n": "x"}, timeout=10)
        assert malformed["ok"] is False and "n" in malformed["error"]
    assert server.stats.as_dict() == {
        "served": 13,
        "refused": 1,
        "malformed": 1,
        "failed": 1,
        "unanswerable": 0,
        "misrouted": 0,
    }
    assert (rt.health.errors, rt.health.rejected) == (1, 1)  # the failure, the malformed one


async def test_malformed_request_is_reported_on_the_errors_topic(
    served: Any, broker: LocalBroker
) -> None:
    rt, server, topics = served
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(topics.errors("svc"))
        await probe.publish_raw(topics.cmd("svc"), b"\xc1 not msgpack", qos=1)
        [report] = await probe.wait_for(topics.errors("svc"))
        assert report["topic"] == topics.cmd("svc")
    assert server.stats.malformed == 1 and server.stats.unanswerable == 1
    assert rt.health.rejected == 1


async def test_no_answer_times_out(broker: LocalBroker, site: str) -> None:
    topics = Topics(site)
    settings = BrokerSettings(host=broker.host, port=broker.port, client_id="cli-lonely")
    async with requester(settings, topics.reply("cli-lonely")) as req:
        with pytest.raises(RequestTimeout, match="no answer"):
            await req.request(topics.cmd("nobody"), Ask(n=1), timeout=0.3)


def test_parse_error_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="invalid Ask"):
        Ask.from_wire({"v": 1})


async def test_write_server_answers_typed_targets_and_refusals(
    base_config: dict[str, Any], site: str, broker: LocalBroker
) -> None:
    config = validate(ServiceConfig, {**base_config, "instance": "plc"}, "test")
    rt = Runtime("test", config)
    topics = Topics(site)
    seen: list[WriteTarget] = []

    async def write(request: WriteRequest) -> float:
        seen.append(request.target)
        if isinstance(request.target, PointTarget) and request.target.point == "locked":
            raise Refused("point 'locked' is not writable")
        return float(request.value)

    server = await serve_writes(rt, topics.cmd("plc"), write)
    task = asyncio.create_task(rt.serve())
    settings = BrokerSettings(host=broker.host, port=broker.port, client_id="cli-w")
    try:
        async with (
            requester(settings, topics.reply("cli-w")) as req,
            Probe(broker.host, broker.port) as probe,
        ):
            await probe.subscribe(topics.errors("plc"))
            cmd = topics.cmd("plc")

            async def ask(target: dict[str, Any], value: Any = 3) -> Any:
                body = {
                    "v": 1,
                    "kind": "write",
                    "request_id": "r",
                    "target": target,
                    "value": value,
                }
                return await req.request(cmd, body, timeout=10)

            assert (await ask({"table": "holding", "address": 4}))["readback"] == 3.0
            assert (await ask({"point": "speed"}))["ok"] is True
            locked = await ask({"point": "locked"})
            assert locked["ok"] is False and "not writable" in locked["error"]
            bogus = await ask({"register": 4})  # no kind of target: answered and reported
            assert bogus["ok"] is False and "target" in bogus["error"]
            [report] = await probe.wait_for(topics.errors("plc"))
            assert "target" in report["reason"]
    finally:
        rt.stop.set()
        await asyncio.wait_for(task, 10)
    assert seen == [
        RegisterTarget(table="holding", address=4),
        PointTarget(point="speed"),
        PointTarget(point="locked"),
    ]
    assert WriteRequest(request_id="r", target=seen[0], value=1).to_wire()["target"] == {
        "table": "holding",
        "address": 4,
    }  # wire unchanged: the unit is only there when it was given
    assert (server.stats.served, server.stats.refused, server.stats.malformed) == (2, 1, 1)
