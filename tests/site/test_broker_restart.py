"""The broker `up` starts is supervised: SIGKILLed under load it comes back on its own, the
screen says so, and the forwarder's history misses only what was in flight when it died."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.broker import free_port
from edgefleet.site.supervisor import SiteSupervisor, StatusChange
from shared import codec
from shared.messages import ModelRef, ResultBatch
from shared.mqtt import BrokerSettings, MqttConnection, Received
from tests.helpers import Probe
from tests.inference.models import mlp
from tests.site.helpers import FEATURES, flow_data, site_data, write_site
from tests.site.up_process import UpProcess

INSTANCES = ["modbus-plc1", "aligner-pump", "inference-pump", "forwarder"]
KILLS = 3
PERIOD_NS = 100_000_000  # the flow's align.period_ms
# A kill may lose what was in flight: raw readings (QoS 0) of the last poll, samples or results
# the broker had accepted but not yet delivered, and what the aligner and inference exchanged
# before both had subscribed again. Those are samples decided in the second before the kill
# (max_delay_ms 200 + a period + delivery) up to the moment every instance is online again.
BEFORE_KILL_S, AFTER_ONLINE_S = 1.0, 0.2
T0 = 1_700_000_000_000_000_000  # results the test publishes itself: far from the live ones


def pid_of(detail: str) -> int:
    m = re.search(r"pid (\d+)", detail)
    assert m, detail
    return int(m[1])


class Results:
    """Every result batch of one flow as it arrives: (arrival time, newest sample time ns)."""

    def __init__(self, port: int, topic: str) -> None:
        self.arrivals: list[tuple[float, int]] = []
        self.sampled: list[tuple[float, list[int]]] = []  # (arrival, every sample time)
        self._arrived = asyncio.Condition()
        settings = BrokerSettings(port=port, reconnect_initial_s=0.05, reconnect_max_s=0.5)
        self.connection = MqttConnection(settings, self._on_message)
        self.topic = topic

    async def _on_message(self, message: Received) -> None:
        batch = ResultBatch.from_wire(codec.decode(message.payload, message.content_type))
        async with self._arrived:
            self.arrivals.append((time.time(), int(batch.t.max())))
            self.sampled.append((time.time(), batch.t.tolist()))
            self._arrived.notify_all()

    async def wait_sampled_after(self, t_ns: int, timeout: float = 30.0) -> float:
        """The arrival time of the first result of a sample taken after `t_ns`."""

        def first() -> float | None:
            return next((at for at, t in self.arrivals if t > t_ns), None)

        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: first() is not None)
        found = first()
        assert found is not None
        return found


def missing_sample_times(db: Path) -> tuple[list[int], list[int]]:
    """(sample times, those absent between the first and the last) of the SQLite history."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, t FROM results WHERE flow = 'pump' ORDER BY t").fetchall()
    ts = [t for _, t in rows]
    assert [i for i, _ in rows] == [f"pump:{t}" for t in ts]
    assert len(set(ts)) == len(ts)
    missing: list[int] = []
    for a, b in itertools.pairwise(ts):
        assert (b - a) % PERIOD_NS == 0, (a, b)  # every sample on the flow's grid
        missing.extend(range(a + PERIOD_NS, b, PERIOD_NS))
    return ts, missing


def restarting(kill: int) -> Callable[[str], bool]:
    """The broker's restart line that names restart number `kill`."""
    return lambda detail: str(kill) in detail


def held_results(db: Path, site: str) -> list[bytes]:
    """The stored results of flow `pump` in mosquitto's saved database, as raw bytes: a stored
    message keeps its payload right after its topic, so each is what follows one
    `ef/{site}/results/pump` up to the next topic of the site (a sample held for the inference's
    session, whose payload holds the same sample times, is cut off by its own topic)."""
    parts = db.read_bytes().split(f"ef/{site}/".encode())
    return [part for part in parts if part.startswith(b"results/pump")]


def holds(held: list[bytes], t: int) -> bool:
    """Whether one of `held` is a result of sample time `t`: a msgpack payload carries its
    sample times as raw little-endian int64 (arrays travel as bytes), a JSON one its ids."""
    marks = (t.to_bytes(8, "little"), f"pump:{t}".encode())
    return any(mark in part for part in held for mark in marks)


def queued_sample_times(queue: Path) -> set[int]:
    """Sample times of the results still in the forwarder's durable queue (taken, not sent)."""
    with sqlite3.connect(queue) as conn:
        rows = conn.execute("SELECT payload, content_type FROM q").fetchall()
    return {
        t
        for payload, content_type in rows
        for t in ResultBatch.from_wire(codec.decode(payload, content_type)).t.tolist()
    }


async def test_a_killed_broker_comes_back_and_the_history_has_no_gap_outside_the_kills(
    tmp_path: Path, site: str, simulator: int
) -> None:
    (tmp_path / "flows").mkdir()
    mlp(tmp_path / "flows" / "pump.onnx", f=len(FEATURES))
    port = free_port()
    data = site_data(site, port, simulator, forwarder={"queue_dir": str(tmp_path / "queue")})
    data["broker"]["start_local"] = True
    flow = flow_data(sinks=[{"kind": "sqlite", "path": "history.db"}])
    path = write_site(tmp_path, data, flow)
    windows: list[tuple[float, float]] = []
    figures: list[float] = []
    results = Results(port, f"ef/{site}/results/pump")

    async with UpProcess(path, tmp_path / "w", tmp_path / "up.out") as up:
        _, detail = await up.wait_state("broker", "online")
        broker_pid = pid_of(detail)
        for name in INSTANCES:
            await up.wait_state(name, "online", timeout=60)
        await results.connection.subscribe(results.topic)
        receiving = asyncio.create_task(results.connection.run())
        async with Probe("127.0.0.1", port) as probe:
            await probe.subscribe(f"ef/{site}/status/+")
            # results for 2 s before the first kill: the history starts before its window
            await results.wait_sampled_after(int((time.time() + 2.0) * 1e9))
            for kill in range(1, KILLS + 1):
                mark = len(up.lines)
                killed_at = time.time()
                os.kill(broker_pid, signal.SIGKILL)
                await up.wait_state("broker", "exited", mark, lambda d: d.startswith("signal 9"))
                for name in INSTANCES:  # no longer shown online
                    await up.wait_state(name, "waiting", mark)
                await up.wait_state("broker", "restarting", mark, restarting(kill))
                _, detail = await up.wait_state("broker", "online", mark)
                assert pid_of(detail) != broker_pid
                broker_pid = pid_of(detail)
                back = await results.wait_sampled_after(int(killed_at * 1e9))
                for name in INSTANCES:
                    await up.wait_state(name, "online", mark)
                windows.append((killed_at - BEFORE_KILL_S, time.time() + AFTER_ONLINE_S))
                figures.append(back - killed_at)
                # steady again before the next kill, so that the loss windows stay apart
                await results.wait_sampled_after(int((time.time() + 1.0) * 1e9))

            # every instance reconnected once per kill and dropped nothing from its outbox
            for name in INSTANCES:
                status = await probe.wait_for(
                    f"ef/{site}/status/{name}",
                    lambda s: s["state"] == "online" and s["health"]["reconnects"] >= KILLS,
                )
                health: dict[str, Any] = status[0]["health"]
                assert health["dropped"] == 0, (name, health)
            queue = health["sink_sqlite"]  # the forwarder's, the last of INSTANCES
            assert queue["dropped"] == queue["dropped_messages"] == 0, queue
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        assert await up.stop() == 0

    print(f"kill -> next result sampled after the kill: {[f'{f:.2f}' for f in figures]} s")
    states = up.states()
    assert sum(1 for _, n, s, _ in states if n == "broker" and s == "exited") == KILLS
    assert sum(1 for _, n, s, _ in states if n == "broker" and s == "online") == KILLS + 1
    assert "every instance stopped" in up.text()

    ts, missing = missing_sample_times(tmp_path / "flows" / "history.db")
    # the history spans every kill: from before the first to after the last window
    assert ts[0] / 1e9 < windows[0][0] and ts[-1] / 1e9 > windows[-1][1], (ts[0], ts[-1])
    outside = [t for t in missing if not any(a <= t / 1e9 <= b for a, b in windows)]
    assert outside == [], f"{len(outside)} result(s) lost outside the kills: {outside[:5]}"
    # what reached this subscriber (a clean session, so it misses what came while it was away)
    # reached the forwarder (a persistent session the restarted broker kept) too: it is in the
    # history, still in the durable queue, or held for it by the broker; except what arrived
    # in the last 0.1 s before a kill: the broker may have died before passing it on
    kills = [a + BEFORE_KILL_S for a, _ in windows]
    seen = {
        t
        for at, sampled in results.sampled
        if not any(k - 0.1 <= at <= k for k in kills)
        for t in sampled
    }
    kept = set(ts) | queued_sample_times(tmp_path / "queue" / "sqlite.db")  # not sent yet
    # and what came before the stop but the forwarder had not committed yet (a forwarder behind
    # under load) still waits in its session, which the broker saved when it stopped
    held = held_results(tmp_path / "w" / "broker" / "mosquitto.db", site)
    lost = [
        (t, round(at - min(kills, key=lambda k: abs(at - k)), 3))
        for at, sampled in results.sampled
        for t in sampled
        if t in seen - kept and not holds(held, t)
    ]
    # the forwarder's last counters (duplicates suppressed, queued) name the path if this fails
    assert lost == [], f"(sample time, arrival - nearest kill): {lost[:5]}; forwarder {health}"
    print(f"{len(ts)} results in the history; lost around the {KILLS} kills: {len(missing)}")


async def test_a_broker_whose_port_is_taken_says_why_and_keeps_trying(
    tmp_path: Path, site: str, simulator: int
) -> None:
    port = free_port()
    data = site_data(site, port, simulator)
    # keepalive 5 s: a connect attempt that reached the squatter gives up after 5 s, not 30
    data["broker"].update(start_local=True, keepalive_s=5)
    path = write_site(tmp_path, data, flow_data(model=None))
    changes: list[StatusChange] = []
    arrived = asyncio.Event()
    squatters: list[asyncio.Server] = []

    async def hang_up(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # another program's port: it speaks no MQTT

    def on_status(change: StatusChange) -> None:
        changes.append(change)
        if change.instance == "broker" and change.state == "exited":
            squatter.bind(("127.0.0.1", port))  # at once, before the restart delay ends
            squatter.listen()
            serving = asyncio.start_server(hang_up, sock=squatter)
            task = asyncio.get_running_loop().create_task(serving)
            task.add_done_callback(lambda t: squatters.append(t.result()))
        arrived.set()

    async def wait_change(pred: Any, start: int) -> StatusChange:
        while True:
            found = [c for c in changes[start:] if pred(c)]
            if found:
                return found[0]
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 30)

    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        async with SiteSupervisor(path, tmp_path / "w", on_status=on_status) as sup:
            await sup.wait_online(timeout=60)
            async with Probe("127.0.0.1", port) as probe:  # every instance past its connect
                await probe.subscribe(f"ef/{site}/samples/pump")
                await probe.wait_for(f"ef/{site}/samples/pump", timeout=30)
            assert sup.broker is not None and sup.broker.pid is not None
            mark = len(changes)
            os.kill(sup.broker.pid, signal.SIGKILL)

            def failed(c: StatusChange) -> bool:
                return c.instance == "broker" and c.state == "failed"

            first = await wait_change(failed, mark)
            assert f"127.0.0.1:{port} is in use" in first.detail, first.detail
            assert "retry in" in first.detail
            await wait_change(failed, changes.index(first) + 1)  # it keeps trying
            assert not sup.broker.running
            assert all(s.state == "waiting" for s in sup.instances.values()), sup.instances
            for server in squatters:  # the port is free again
                server.close()
                await server.wait_closed()
            squatter.close()

            back = await wait_change(lambda c: c.instance == "broker" and c.state == "online", mark)
            assert sup.broker.running and sup.broker.pid == pid_of(back.detail)
            await sup.wait_online(timeout=30)
    finally:
        squatter.close()
    assert any(c.instance == "broker" and c.state == "restarting" for c in changes)


def result_batch(first: int, n: int) -> dict[str, Any]:
    """Results of flow `pump` at sample times T0 + i ms, as an inference would publish them."""
    t = T0 + np.arange(first, first + n, dtype=np.int64) * 1_000_000
    scores = np.zeros(n, np.float32)
    model = ModelRef("pump", "1", "ab" * 32)
    return ResultBatch("pump", model, t, {"score": scores}, np.zeros(n, np.float32)).to_wire()


def saved(db: Path, marker: bytes, timeout: float = 5.0) -> bool:
    """Whether mosquitto's persistence file comes to hold `marker` within `timeout` (each save
    replaces the whole file; mosquitto tells no one when it saved, so look at the file)."""
    deadline = time.monotonic() + timeout
    while not (db.exists() and marker in db.read_bytes()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def test_configs_and_the_forwarders_session_survive_a_broker_kill(
    tmp_path: Path, site: str, simulator: int
) -> None:
    port = free_port()
    data = site_data(site, port, simulator, forwarder={"queue_dir": str(tmp_path / "queue")})
    data["broker"]["start_local"] = True
    flow = flow_data(model=None, sinks=[{"kind": "sqlite", "path": "history.db"}])
    path = write_site(tmp_path, data, flow)
    config_topic = f"ef/{site}/config/elsewhere"
    async with SiteSupervisor(path, tmp_path / "w") as sup:
        await sup.wait_online(timeout=60)
        assert sup.broker is not None
        async with Probe("127.0.0.1", port) as probe:
            await probe.subscribe(f"ef/{site}/status/forwarder")
            # a retained config: `up` has the broker save it at once, not at its next autosave
            await probe.publish(config_topic, {"revision": 7}, qos=1, retain=True)
            db = tmp_path / "w" / "broker" / "mosquitto.db"
            assert await asyncio.to_thread(saved, db, config_topic.encode())

            # the forwarder away (stopped, not dead) while the broker dies and comes back
            forwarder = sup.instances["forwarder"].pid
            assert forwarder is not None and sup.broker.pid is not None
            os.kill(forwarder, signal.SIGSTOP)
            try:
                os.kill(sup.broker.pid, signal.SIGKILL)
                await sup.wait_state("modbus-plc1", "waiting")
                await sup.wait_state("modbus-plc1", "online")
                await asyncio.wait_for(probe.connection.wait_connected(), 10)
                # published while the forwarder is away: kept for it by its restored session
                result = await probe.publish(f"ef/{site}/results/pump", result_batch(0, 5), qos=1)
                assert result.ok and not result.queued
            finally:
                os.kill(forwarder, signal.SIGCONT)
            await probe.wait_for(
                f"ef/{site}/status/forwarder",
                lambda s: s["state"] == "online" and s["health"]["sink_sqlite"]["sent"] >= 5,
                timeout=30,
            )
            await probe.subscribe(config_topic)
            (config,) = await probe.wait_for(config_topic)
            assert config == {"revision": 7}
    with sqlite3.connect(tmp_path / "flows" / "history.db") as history:
        ids = {i for (i,) in history.execute("SELECT id FROM results")}
    assert ids >= {f"pump:{T0 + i * 1_000_000}" for i in range(5)}


async def test_results_a_forwarder_had_not_taken_at_the_stop_reach_the_history_next_time(
    tmp_path: Path, site: str, simulator: int
) -> None:
    """A forwarder behind at the stop (under load a commit waits on its fsync; here it is
    stopped) leaves what the broker accepted for it in its session: the broker saves the
    session when it stops, and the results reach the history when the site runs again. The
    load test above counts such results as held, not lost, by `held_results`."""
    port = free_port()
    data = site_data(site, port, simulator, forwarder={"queue_dir": str(tmp_path / "queue")})
    data["broker"]["start_local"] = True
    data["supervisor"]["stop_timeout_s"] = 1  # the SIGKILL that ends the stopped forwarder
    flow = flow_data(model=None, sinks=[{"kind": "sqlite", "path": "history.db"}])
    path = write_site(tmp_path, data, flow)
    history, queue = tmp_path / "flows" / "history.db", tmp_path / "queue" / "sqlite.db"
    ts = [T0 + i * 1_000_000 for i in range(5)]

    def stored() -> set[int]:
        with sqlite3.connect(history) as conn:
            return {t for (t,) in conn.execute("SELECT t FROM results WHERE flow = 'pump'")}

    async with SiteSupervisor(path, tmp_path / "w") as sup:
        await sup.wait_online(timeout=60)
        forwarder = sup.instances["forwarder"].pid
        assert forwarder is not None
        async with Probe("127.0.0.1", port) as probe:
            os.kill(forwarder, signal.SIGSTOP)  # the stop's SIGTERM waits; its SIGKILL does not
            result = await probe.publish(f"ef/{site}/results/pump", result_batch(0, 5), qos=1)
            assert result.ok and not result.queued  # the broker has them
    assert not stored() & set(ts) and not queued_sample_times(queue) & set(ts)
    held = held_results(tmp_path / "w" / "broker" / "mosquitto.db", site)
    assert all(holds(held, t) for t in ts), "the results are not in the forwarder's session"
    assert not holds(held, ts[-1] + 1_000_000)  # a sample time never published

    async with SiteSupervisor(path, tmp_path / "w") as sup:
        await sup.wait_online(timeout=60)
        async with Probe("127.0.0.1", port) as probe:
            await probe.subscribe(f"ef/{site}/status/forwarder")
            await probe.wait_for(
                f"ef/{site}/status/forwarder",
                lambda s: s["state"] == "online" and s["health"]["sink_sqlite"]["sent"] >= 5,
                timeout=30,
            )
    assert stored() >= set(ts)


async def test_a_restarted_broker_does_not_claim_an_instance_that_died_with_it_online(
    tmp_path: Path, site: str, simulator: int
) -> None:
    """A power cut: the broker dies and an instance with it, so the instance's last will is
    never left, and the broker's persistence still holds its retained `online`. The next `up`
    (whose site.yaml no longer has that source) must not let the broker claim it online."""
    port = free_port()
    data = site_data(site, port, simulator)
    data["broker"]["start_local"] = True
    data["sources"].append({**data["sources"][0], "name": "plc2"})
    path = write_site(tmp_path, data, flow_data(model=None))
    gone, kept = f"ef/{site}/status/modbus-plc2", f"ef/{site}/status/modbus-plc1"
    async with SiteSupervisor(path, tmp_path / "w") as sup:
        await sup.wait_online(timeout=60)
        db = tmp_path / "w" / "broker" / "mosquitto.db"
        assert await asyncio.to_thread(saved, db, gone.encode())  # saved once it was online
        plc2 = sup.instances["modbus-plc2"].pid
        assert sup.broker is not None and sup.broker.pid is not None and plc2 is not None
        os.kill(sup.broker.pid, signal.SIGKILL)  # first: the will dies with it
        os.kill(plc2, signal.SIGKILL)
    # leaving the block stopped the rest before the broker could be started again

    data["sources"] = data["sources"][:1]
    path = write_site(tmp_path, data, flow_data(model=None))
    async with SiteSupervisor(path, tmp_path / "w") as sup:
        await sup.wait_online(timeout=60)
        async with Probe("127.0.0.1", port) as probe:
            await probe.subscribe(f"ef/{site}/status/+")
            await probe.wait_for(gone, lambda s: s["state"] == "offline", timeout=30)
            await probe.wait_for(kept, lambda s: s["state"] == "online")
        async with Probe("127.0.0.1", port) as later:  # what any reader gets from now on
            await later.subscribe(gone)
            (status,) = await later.wait_for(gone)
            assert status["state"] == "offline" and status["instance"] == "modbus-plc2"
