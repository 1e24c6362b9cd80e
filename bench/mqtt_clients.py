"""MQTT client libraries side by side: receive and publish message rates on one mosquitto.

    .venv/bin/python bench/mqtt_clients.py [--messages 100000] [--rounds 2]

One broker (edgefleet.broker.LocalBroker: the shipped settings, TCP_NODELAY on), one run, the
same payload (a small JSON value with the MQTT v5 content-type property), QoS 0 and QoS 1.

- receive: the client under test subscribes in its own process; the load comes from C
  generators (`mosquitto_pub -l`, GENERATORS processes in parallel); the rate is counted from the
  first to the last message the client saw. The same generators feeding `mosquitto_sub` (C) show
  what the generators and the broker can deliver: the ceiling above every Python client.
- publish: the client under test publishes the messages as fast as it can (QoS 1: up to
  INFLIGHT unacknowledged); `mosquitto_sub` (C) counts them from first to last.

Clients: raw paho (its own network thread: the limit), aiomqtt's `Client.messages`,
`shared.mqtt.MqttConnection` (what every service runs on), paho's callback API driven by the
asyncio loop's socket readiness (add_reader/add_writer + loop_read/loop_write/loop_misc, the
pattern paho documents for external event loops), and gmqtt (asyncio-native MQTT 5) if installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import multiprocessing as mp
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.broker import LocalBroker

TOPIC = "bench/clients/x"
PAYLOAD = b'{"value": 23.4, "ts": 1733050000123}'
CONTENT_TYPE = "application/json"
GENERATORS = 3
INFLIGHT = 100
IDLE_S = 1.5  # a receiver that saw nothing new for this long has seen everything it will


class Counter:
    """First/last arrival times and a count; `done` when `n` arrived or the stream went idle."""

    def __init__(self, n: int) -> None:
        self.n, self.count, self.first, self.last = n, 0, 0.0, 0.0

    def hit(self, k: int = 1) -> None:
        now = time.perf_counter()
        if not self.count:
            self.first = now
        self.count += k
        self.last = now

    def result(self) -> tuple[int, float]:
        return self.count, (self.last - self.first) if self.count > 1 else 0.0


def _props() -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.ContentType = CONTENT_TYPE
    return p


# ---------------------------------------------------------------- client drivers (in a process)


def paho_raw(port: int, role: str, qos: int, n: int, ready: Any, out: Any) -> None:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(INFLIGHT)
    counter = Counter(n)
    done = threading.Event()

    def tick(*_: object) -> None:
        counter.hit()
        if counter.count >= n:
            done.set()

    c.on_message = tick
    c.on_publish = tick
    c.connect("127.0.0.1", port)
    c.loop_start()
    if role == "sub":
        c.subscribe(TOPIC, qos)
        time.sleep(0.3)
        ready.set()
        _wait_idle(counter, done)
    else:
        ready.set()
        props = _props()
        for _ in range(n):
            c.publish(TOPIC, PAYLOAD, qos, properties=props)
        done.wait(60)
    c.loop_stop()
    out.put(counter.result())


def _wait_idle(counter: Counter, done: threading.Event) -> None:
    last = -1
    while not done.wait(IDLE_S):
        if counter.count == last and counter.count:
            return
        last = counter.count


async def _async_wait_idle(counter: Counter, done: asyncio.Event) -> None:
    last = -1
    while True:
        try:
            await asyncio.wait_for(done.wait(), IDLE_S)
            return
        except TimeoutError:
            if counter.count == last and counter.count:
                return
            last = counter.count


def paho_asyncio(port: int, role: str, qos: int, n: int, ready: Any, out: Any) -> None:
    async def run() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        c.max_inflight_messages_set(INFLIGHT)
        counter = Counter(n)
        done, connected = asyncio.Event(), asyncio.Event()

        def tick(*_: object) -> None:
            counter.hit()
            if counter.count >= n:
                done.set()

        c.on_message = tick
        c.on_publish = tick
        c.on_connect = lambda *_: connected.set()
        c.on_socket_open = lambda _c, _u, sock: loop.add_reader(sock, c.loop_read)
        c.on_socket_close = lambda _c, _u, sock: loop.remove_reader(sock)
        c.on_socket_register_write = lambda _c, _u, sock: loop.add_writer(sock, c.loop_write)
        c.on_socket_unregister_write = lambda _c, _u, sock: loop.remove_writer(sock)
        c.connect("127.0.0.1", port)

        async def misc() -> None:
            # loop_misc is paho's timer (keepalive, retries): a periodic call is its contract
            while c.loop_misc() == paho.MQTT_ERR_SUCCESS:  # noqa: ASYNC110
                await asyncio.sleep(1)

        misc_task = asyncio.create_task(misc())
        await connected.wait()
        if role == "sub":
            c.subscribe(TOPIC, qos)
            await asyncio.sleep(0.3)
            ready.set()
            await _async_wait_idle(counter, done)
        else:
            ready.set()
            props = _props()
            for i in range(n):
                c.publish(TOPIC, PAYLOAD, qos, properties=props)
                if i % 100 == 0:
                    await asyncio.sleep(0)  # let the writer run, as a service's loop would
            with contextlib.suppress(TimeoutError):  # a stall shows as a short count
                await asyncio.wait_for(done.wait(), 60)
        misc_task.cancel()
        c.disconnect()
        return counter.result()

    out.put(asyncio.run(run()))


def aiomqtt_client(port: int, role: str, qos: int, n: int, ready: Any, out: Any) -> None:
    import logging

    import aiomqtt

    logging.getLogger("mqtt").setLevel(logging.ERROR)  # a warning per publish past 10 pending

    async def run() -> tuple[int, float]:
        counter = Counter(n)
        async with aiomqtt.Client(
            "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=INFLIGHT
        ) as c:
            if role == "sub":
                await c.subscribe(TOPIC, qos)
                await asyncio.sleep(0.3)
                ready.set()
                done = asyncio.Event()

                async def consume() -> None:
                    async for _ in c.messages:
                        counter.hit()
                        if counter.count >= n:
                            done.set()

                task = asyncio.create_task(consume())
                await _async_wait_idle(counter, done)
                task.cancel()
            else:
                ready.set()
                props = _props()
                await _publish_windowed(
                    lambda: c.publish(TOPIC, PAYLOAD, qos, properties=props), n, qos, counter
                )
        return counter.result()

    out.put(asyncio.run(run()))


async def _publish_windowed(publish: Callable[[], Any], n: int, qos: int, counter: Counter) -> None:
    """`await publish()` n times: one at a time at QoS 0, INFLIGHT concurrent ones at QoS 1."""

    async def worker(k: int) -> None:
        for _ in range(k):
            await publish()
            counter.hit()

    workers = 1 if qos == 0 else INFLIGHT
    await asyncio.gather(*(worker(n // workers) for _ in range(workers)))


def mqtt_connection(port: int, role: str, qos: int, n: int, ready: Any, out: Any) -> None:
    from shared.mqtt import BrokerSettings, MqttConnection, Received

    async def run() -> tuple[int, float]:
        counter = Counter(n)
        done = asyncio.Event()

        async def handle(_: Received) -> None:
            counter.hit()
            if counter.count >= n:
                done.set()

        conn = MqttConnection(BrokerSettings(port=port, max_inflight=INFLIGHT), handle)
        runner = asyncio.create_task(conn.run())
        await conn.wait_connected()
        if role == "sub":
            await conn.subscribe(TOPIC, qos)
            await asyncio.sleep(0.3)
            ready.set()
            await _async_wait_idle(counter, done)
        else:
            ready.set()
            await _publish_windowed(
                lambda: conn.publish(TOPIC, PAYLOAD, content_type=CONTENT_TYPE, qos=qos),
                n,
                qos,
                counter,
            )
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        return counter.result()

    out.put(asyncio.run(run()))


def gmqtt_client(port: int, role: str, qos: int, n: int, ready: Any, out: Any) -> None:
    """gmqtt's public API. Its publish has no flow control and no PUBACK callback, so QoS 1
    publishing runs out of packet ids: that row is MqttConnection's (gmqtt with a window)."""
    import gmqtt

    async def run() -> tuple[int, float]:
        counter = Counter(n)
        done = asyncio.Event()

        def tick(*_: object) -> int:
            counter.hit()
            if counter.count >= n:
                done.set()
            return 0

        c = gmqtt.Client("")
        c.on_message = tick
        if role == "pub":
            c.on_publish = tick  # QoS 1: one call per PUBACK
        await c.connect("127.0.0.1", port, version=gmqtt.constants.MQTTv50)
        if role == "sub":
            c.subscribe(TOPIC, qos)
            await asyncio.sleep(0.3)
            ready.set()
            await _async_wait_idle(counter, done)
        else:
            ready.set()
            for i in range(n):
                c.publish(TOPIC, PAYLOAD, qos, content_type=CONTENT_TYPE)
                if qos == 0:
                    counter.hit()
                if i % 100 == 0:
                    await asyncio.sleep(0)
            if qos:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 60)
        await c.disconnect()
        return counter.result()

    out.put(asyncio.run(run()))


CLIENTS: dict[str, Callable[..., None]] = {
    "paho (own thread)": paho_raw,
    "paho on asyncio loop": paho_asyncio,
    "aiomqtt Client.messages": aiomqtt_client,
    "MqttConnection": mqtt_connection,
}
if importlib.util.find_spec("gmqtt"):
    CLIENTS["gmqtt"] = gmqtt_client
if not importlib.util.find_spec("aiomqtt"):
    del CLIENTS["aiomqtt Client.messages"]


# ---------------------------------------------------------------- C generators and counters


def generators(port: int, qos: int, n: int) -> tuple[float, list[subprocess.Popen[bytes]]]:
    """Start GENERATORS `mosquitto_pub -l` processes sharing n messages; feed them their lines."""
    lines = PAYLOAD + b"\n"
    procs = [
        subprocess.Popen(
            [
                *("mosquitto_pub", "-p", str(port), "-t", TOPIC, "-q", str(qos), "-l", "-V", "5"),
                *("-D", "publish", "content-type", CONTENT_TYPE),
            ],
            stdin=subprocess.PIPE,
        )
        for _ in range(GENERATORS)
    ]
    start = time.perf_counter()
    feeders = [threading.Thread(target=_feed, args=(p, lines * (n // GENERATORS))) for p in procs]
    for t in feeders:
        t.start()
    for t in feeders:
        t.join()
    return start, procs


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.close()


def c_counter(port: int, qos: int, n: int) -> tuple[subprocess.Popen[bytes], Counter, Any]:
    """`mosquitto_sub` printing one line per message; a thread timestamps the lines."""
    proc = subprocess.Popen(
        ["mosquitto_sub", "-p", str(port), "-t", TOPIC, "-q", str(qos), "-C", str(n), "-V", "5"],
        stdout=subprocess.PIPE,
    )
    counter = Counter(n)

    def read() -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            counter.hit()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.4)  # subscribed (no readiness signal from mosquitto_sub)
    return proc, counter, reader


def _finish_c_counter(proc: subprocess.Popen[bytes], reader: threading.Thread) -> None:
    reader.join(IDLE_S * 4)
    if proc.poll() is None:
        proc.terminate()
    proc.wait()


def measure_receive(port: int, name: str, qos: int, n: int) -> tuple[int, float]:
    if name == "mosquitto_sub (C)":
        proc, counter, reader = c_counter(port, qos, n)
        _, gens = generators(port, qos, n)
        for g in gens:
            g.wait()
        _finish_c_counter(proc, reader)
        return counter.result()
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=CLIENTS[name], args=(port, "sub", qos, n, ready, out))
    proc.start()
    ready.wait(30)
    _, gens = generators(port, qos, n)
    for g in gens:
        g.wait()
    result = out.get(timeout=120)
    proc.join(10)
    return result  # type: ignore[no-any-return]


def measure_publish(port: int, name: str, qos: int, n: int) -> tuple[int, float]:
    if name == "gmqtt" and qos == 1:
        return (0, 0.0)
    proc, counter, reader = c_counter(port, qos, n)
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    client = ctx.Process(target=CLIENTS[name], args=(port, "pub", qos, n, ready, out))
    client.start()
    out.get(timeout=120)
    client.join(10)
    _finish_c_counter(proc, reader)
    return counter.result()


def rate(result: tuple[int, float]) -> float:
    count, seconds = result
    return (count - 1) / seconds if seconds else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="client names (substring) to run")
    args = parser.parse_args()
    n = args.messages - args.messages % (INFLIGHT * GENERATORS)
    names = [k for k in CLIENTS if not args.only or any(o in k for o in args.only)]
    if "paho (own thread)" not in names:
        names.insert(0, "paho (own thread)")
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp)) as broker:
        for rnd in range(1, args.rounds + 1):
            print(f"\nround {rnd}: {n} messages of {len(PAYLOAD)} B, {GENERATORS} generators")
            print(
                f"{'client':<26} {'qos':>3} {'recv msg/s':>11} {'×paho':>6} "
                f"{'publish msg/s':>14} {'×paho':>6}"
            )
            for qos in (0, 1):
                c_recv = measure_receive(broker.port, "mosquitto_sub (C)", qos, n)
                print(
                    f"{'mosquitto_sub (C) ceiling':<26} {qos:>3} {rate(c_recv):>11.0f} "
                    f"{'':>6} {'':>14} {'':>6}   ({c_recv[0]} of {n})"
                )
                base: tuple[float, float] | None = None
                for name in names:
                    recv = measure_receive(broker.port, name, qos, n)
                    pub = measure_publish(broker.port, name, qos, n)
                    r, p = rate(recv), rate(pub)
                    if base is None:
                        base = (r, p)
                    lost = "" if recv[0] >= n and pub[0] >= n else f"   (got {recv[0]}/{pub[0]})"
                    print(
                        f"{name:<26} {qos:>3} {r:>11.0f} {r / base[0]:>6.2f} "
                        f"{p:>14.0f} {p / base[1]:>6.2f}{lost}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
