"""The MQTT module against a real mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.broker import LocalBroker
from shared.errors import ProtocolError
from shared.mqtt import BrokerSettings, MqttConnection, NotConnected, Received
from tests.helpers import Probe, until


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\ntopic deny forbidden/#\n")
    b = LocalBroker(tmp_path / "broker", extra_config=f"acl_file {acl}\n").start()
    yield b
    b.stop()


async def test_publish_returns_the_brokers_reason_code(acl_broker: LocalBroker) -> None:
    async with Probe(acl_broker.host, acl_broker.port) as probe:
        refused = await probe.publish_raw("forbidden/x", b"1", qos=1)
        assert not refused.ok and refused.reason_code == 0x87  # Not authorized
        nobody = await probe.publish_raw("nobody/listens", b"1", qos=1)
        assert nobody.ok and nobody.reason_code == 0x10  # No matching subscribers: success
        assert probe.connection.stats.publish_failures == 1


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), "edge", "right"], check=True)
    return path


async def test_bad_credentials_stop_the_retries(tmp_path: Path, passwords: Path) -> None:
    with LocalBroker(
        tmp_path / "broker", extra_config=f"allow_anonymous false\npassword_file {passwords}\n"
    ) as b:
        wrong = MqttConnection(BrokerSettings(port=b.port, username="edge", password="wrong"))
        with pytest.raises(ProtocolError, match="refused the credentials"):
            await asyncio.wait_for(wrong.run(), 10)
        async with Probe(b.host, b.port, username="edge", password="right") as probe:
            assert (await probe.publish_raw("a/b", b"1", qos=1)).ok


async def test_outage_buffer_is_bounded_and_counts_drops(broker: LocalBroker) -> None:
    connection = MqttConnection(BrokerSettings(port=broker.port, outbox_max=3))
    for i in range(5):
        result = await connection.publish("t/x", str(i).encode(), qos=1)
        assert result.queued
    with pytest.raises(NotConnected):
        await connection.publish("t/x", b"unbuffered", buffer=False)
    assert connection.stats.dropped == 2
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe("t/#")
        runner = asyncio.create_task(connection.run())
        try:
            await probe.wait_for("t/#", count=3)
            await connection.wait_connected()  # the buffer drained
            await connection.publish("t/x", b"5", qos=1)  # a marker: nothing else came before it
            await probe.wait_for("t/#", count=4)
            assert [m.payload for m in probe.received("t/#")] == [b"2", b"3", b"4", b"5"]
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)


async def test_a_broker_lost_while_the_outbox_drains_is_reconnected(broker: LocalBroker) -> None:
    """The drain awaits PUBACKs on a connection that has just died: the wait must end with the
    connection, or the supervisor (the one waiting) never reconnects."""
    connection = MqttConnection(
        BrokerSettings(port=broker.port, reconnect_initial_s=0.05, reconnect_max_s=0.5)
    )
    restarts = 0

    async def restart_the_broker() -> None:
        nonlocal restarts
        if restarts == 0:  # blocking: the loop sees the close only once the drain has begun
            restarts += 1
            broker.restart()

    connection.on_connect(restart_the_broker)
    for i in range(3):
        assert (await connection.publish("t/x", str(i).encode(), qos=1)).queued
    durable = {"client_id": "drain-probe", "clean_start": False, "session_expiry_s": 600}
    async with Probe(broker.host, broker.port, **durable) as probe:
        await probe.subscribe("t/#")
        runner = asyncio.create_task(connection.run())
        try:
            await asyncio.wait_for(connection.wait_connected(), 10)
            assert connection.stats.reconnects == 1 and connection.buffered == 0
            await probe.wait_until(
                lambda: {b"0", b"1", b"2"} <= {m.payload for m in probe.messages}
            )
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)


async def test_a_message_not_acked_is_delivered_again(broker: LocalBroker) -> None:
    """manual_ack: a consumer that dies before committing gets the message again."""
    settings = BrokerSettings(
        port=broker.port,
        client_id="committer",
        clean_start=False,
        session_expiry_s=300,
        reconnect_initial_s=0.05,
    )
    got: list[Received] = []
    arrived = asyncio.Event()

    async def keep(message: Received) -> None:
        got.append(message)
        arrived.set()

    async def consume(ack: bool, wait_s: float = 10) -> None:
        arrived.clear()
        connection = MqttConnection(settings, keep, manual_ack=True)
        await connection.subscribe("jobs/#", qos=1)
        runner = asyncio.create_task(connection.run())
        try:
            await asyncio.wait_for(arrived.wait(), wait_s)
            if ack:
                connection.ack(got[-1])
                # no event tells that the PUBACK left the socket: give it time to
                await asyncio.sleep(0.2)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    # Create the persistent session, then queue one job for it while it is away.
    connection = MqttConnection(settings, keep, manual_ack=True)
    await connection.subscribe("jobs/#", qos=1)
    runner = asyncio.create_task(connection.run())
    await asyncio.wait_for(connection.wait_connected(), 10)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    async with Probe(broker.host, broker.port) as probe:
        assert (await probe.publish_raw("jobs/1", b"job", qos=1)).ok

    await consume(ack=False)  # received, never acknowledged: "crashed" before commit
    await consume(ack=True)  # the broker delivers it again
    assert [m.payload for m in got] == [b"job", b"job"]
    got.clear()
    with pytest.raises(TimeoutError):
        await consume(ack=True, wait_s=1.5)  # acknowledged: not delivered a third time


async def test_a_slow_handler_pauses_the_socket_and_loses_nothing(broker: LocalBroker) -> None:
    """Past INBOX_HIGH waiting messages the socket is paused (the broker holds the rest)."""
    from shared.mqtt import INBOX_HIGH

    total = INBOX_HIGH * 2 + 500
    got: list[bytes] = []
    release, done = asyncio.Event(), asyncio.Event()

    async def slow(message: Received) -> None:
        await release.wait()  # the dispatcher is stuck until everything was published
        got.append(message.payload)
        if len(got) == total:
            done.set()

    consumer = MqttConnection(BrokerSettings(port=broker.port), slow)
    await consumer.subscribe("flood/x", qos=0)
    runner = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(consumer.wait_connected(), 10)
        async with Probe(broker.host, broker.port) as probe:
            for i in range(total):
                await probe.publish_raw("flood/x", str(i).encode())
            assert (await probe.publish_raw("flood/sync", b"", qos=1)).ok
            await asyncio.sleep(0.3)  # what the socket gave has reached the inbox
            # bounded: the high-water mark plus the rest of the socket read that crossed it
            assert consumer._paused is not None and len(consumer._inbox) < 2 * INBOX_HIGH
            release.set()
            await asyncio.wait_for(done.wait(), 30)
        assert got == [str(i).encode() for i in range(total)]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_unsubscribe_stops_delivery_now_and_after_a_reconnect(broker: LocalBroker) -> None:
    got: asyncio.Queue[Received] = asyncio.Queue()
    conn = MqttConnection(
        BrokerSettings(host=broker.host, port=broker.port, reconnect_initial_s=0.05), got.put
    )
    await conn.subscribe("u/a", qos=1)
    await conn.subscribe("u/b", qos=1)
    task = asyncio.create_task(conn.run())
    try:
        await asyncio.wait_for(conn.wait_connected(), 10)
        async with Probe(broker.host, broker.port) as probe:
            assert (await probe.publish_raw("u/a", b"1", qos=1)).reason_code == 0
            await conn.unsubscribe("u/a")
            assert conn.subscriptions == ["u/b"]
            # the broker has no subscriber left for it: MQTT v5 says so in the PUBACK
            assert (await probe.publish_raw("u/a", b"2", qos=1)).reason_code == 0x10
            await conn.unsubscribe("u/a")  # again: nothing to do
            broker.restart()
            await until(lambda: conn.stats.reconnects >= 1 and conn.connected)
            await until(lambda: probe.connection.stats.reconnects >= 1)
            await asyncio.wait_for(probe.connection.wait_connected(), 10)
            assert (await probe.publish_raw("u/a", b"3", qos=1)).reason_code == 0x10
            assert (await probe.publish_raw("u/b", b"4", qos=1)).reason_code == 0
        payloads = [got.get_nowait().payload for _ in range(got.qsize())]
        assert payloads == [b"1", b"4"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_retained_message_with_an_expiry_is_forgotten_by_the_broker(
    broker: LocalBroker,
) -> None:
    async with Probe(broker.host, broker.port) as probe:
        await probe.publish("x/keep", {"k": 1}, qos=1, retain=True)
        await probe.publish("x/gone", {"g": 1}, qos=1, retain=True, expiry_s=1)
        async with Probe(broker.host, broker.port) as early:
            await early.subscribe("x/+")
            await early.wait_for("x/+", count=2)
        await asyncio.sleep(2.1)  # the expiry is wall time on the broker: nothing to wait on
        async with Probe(broker.host, broker.port) as late:
            await late.subscribe("x/+")
            await late.wait_for("x/keep")
            await probe.publish("x/marker", {"m": 1}, qos=1)  # after the retained ones
            await late.wait_for("x/marker")
            assert [m.topic for m in late.messages] == ["x/keep", "x/marker"]


async def test_max_inflight_above_the_brokers_receive_maximum_is_capped(tmp_path: Path) -> None:
    """gmqtt raises OverflowError once receive maximum - 1 publishes await their PUBACK; the
    connection keeps below the CONNACK's receive maximum (mosquitto: max_inflight_messages)."""
    with LocalBroker(tmp_path / "broker", extra_config="max_inflight_messages 5\n") as b:
        async with Probe(b.host, b.port) as probe:
            await probe.subscribe("capped/#")
            connection = MqttConnection(BrokerSettings(port=b.port, max_inflight=50))
            task = asyncio.create_task(connection.run())
            try:
                await asyncio.wait_for(connection.wait_connected(), 10)
                assert connection.inflight_limit == 3  # 5 - 1 ids, one kept for a subscribe
                results = await asyncio.gather(
                    *(connection.publish(f"capped/{i}", b"x", qos=1) for i in range(300)),
                    connection.subscribe("other/#"),  # takes a packet id while publishes wait
                )
                assert all(r is None or r.ok for r in results)
                await probe.wait_until(lambda: len(probe.received("capped/#")) == 300)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
