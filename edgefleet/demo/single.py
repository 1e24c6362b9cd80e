"""`edgefleet demo --site`: from nothing to a detected pump anomaly at one site, in one command.

1. starts a local mosquitto (the site broker), a second one standing for the cloud, and the plant
   simulator (its Modbus server);
2. runs the Modbus adapter and records normal operation with `edgefleet record`'s code;
3. trains the example model (examples/train_pump_model.py) on it;
4. starts the site through the site supervisor (`edgefleet up`'s API): Modbus adapter, aligner,
   inference, actuator (actions enabled: the simulator's alarm lamp), forwarder (a SQLite history
   and the cloud broker);
5. injects cavitation after a while and shows, one line per second, a few signals, the anomaly
   score and the alarm lamp; the actuator lights the lamp, and resets it after the fault.

Ctrl-C (or `--duration`) stops everything it started, leaving nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgefleet.broker import LocalBroker, free_port
from edgefleet.flow import load_flow
from edgefleet.record import record
from edgefleet.sim import PlantSimulator
from edgefleet.site.load import load_site
from edgefleet.site.supervisor import SiteSupervisor, StatusChange
from shared import clock, codec
from shared.messages import ResultBatch
from shared.mqtt import BrokerSettings, MqttConnection, Received
from shared.topics import Kind, Topics, every_site

SITE = "demo"
FLOW = "pump-anomaly"
SOURCE = "plc1"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BAR = 20
# What a run writes in its workdir, removed before the next run (and nothing else is).
FRESH = (
    "broker", "cloud-broker", "record-site", "site", "flows", "forwarder", "site.yaml",
    "site-record.yaml", "normal.csv", "pump-anomaly.onnx", "history.db", "history.db-wal",
    "history.db-shm",
)  # fmt: skip


@dataclass(frozen=True)
class Phases:
    """Seconds of each part of the story (the simulator runs in real time)."""

    record: float
    normal: float  # site running, no fault
    fault: float  # cavitation
    after: float  # back to normal, the lamp resets


STORY = Phases(record=30, normal=20, fault=30, after=25)
FAST = Phases(record=14, normal=6, fault=14, after=12)


def modbus_source(port: int) -> dict[str, Any]:
    """The simulator's pump (unit 1): input registers 0-7 polled every 100 ms, the lamp coil."""

    def reg(name: str, address: int, scale: float, kind: str = "uint16") -> dict[str, Any]:
        return {"name": name, "address": address, "type": kind, "scale": scale}

    return {
        "name": SOURCE,
        "kind": "modbus",
        "device": {"host": "127.0.0.1", "port": port, "timeout_s": 1.0},
        "poll_ms": 100,
        "blocks": [
            {
                "unit": 1,
                "table": "input",
                "points": [
                    reg("suction_pressure", 0, 0.01, "int16"),
                    reg("discharge_pressure", 1, 0.01, "int16"),
                    reg("flow", 2, 0.1),
                    reg("motor_current", 3, 0.1),
                    reg("bearing_temperature", 4, 0.1, "int16"),
                    reg("vibration", 6, 0.01),
                ],
            },
            {
                "unit": 1,
                "table": "coil",
                "points": [{"name": "alarm_lamp", "address": 0, "type": "bool", "writable": True}],
            },
        ],
    }


def write_site(
    workdir: Path, name: str, broker_port: int, modbus_port: int, flows: list[str]
) -> Path:
    site = {
        "site": SITE,
        "broker": {"host": "127.0.0.1", "port": broker_port},
        "timings": {"status_interval_s": 2},
        "sources": [modbus_source(modbus_port)],
        "flows": flows,
        "actuator": {"enabled": True},  # the demo's lamp may be written
        "forwarder": {"queue_dir": "forwarder"},
    }
    path = workdir / name
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


def write_flow(workdir: Path, model: Path, threshold: float, cloud_port: int) -> Path:
    """The example flow with the trained model, its threshold, and the demo's two sinks."""
    flow = yaml.safe_load((EXAMPLES / "pump-anomaly.yaml").read_text())
    flow["model"] = {"path": str(model.resolve())}
    lamp = flow["actions"][0]
    lamp["when"] = f"score > {threshold:.3f}"
    lamp["reset"]["when"] = f"score < {threshold * 0.7:.3f}"
    flow["sinks"] = [
        {"kind": "sqlite", "path": str((workdir / "history.db").resolve())},
        {"kind": "mqtt", "name": "cloud", "broker": {"host": "127.0.0.1", "port": cloud_port}},
    ]
    path = workdir / "flows" / f"{FLOW}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def running_site(
    site_file: Path, workdir: Path, on_status: Callable[[StatusChange], None]
) -> AsyncIterator[SiteSupervisor]:
    """The site's processes for the block: the one place the demo starts services."""
    async with SiteSupervisor(load_site(site_file), workdir, on_status=on_status) as sup:
        await sup.wait_online(timeout=60)
        yield sup


def train(recording: Path, model: Path) -> dict[str, Any]:
    """examples/train_pump_model.py, as a data scientist runs it."""
    spec = importlib.util.spec_from_file_location(
        "train_pump_model", EXAMPLES / "train_pump_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result: dict[str, Any] = module.train(recording, model)
    return result


class Colours:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text


@dataclass
class Live:
    """What the demo watches on the brokers: latest readings, scores, events, cloud deliveries."""

    threshold: float = 1.0
    values: dict[str, float] = field(default_factory=dict)
    scores: list[tuple[int, float]] = field(default_factory=list)  # (sample time ns, score)
    events: list[dict[str, Any]] = field(default_factory=list)
    cloud_results: int = 0

    async def on_site(self, message: Received) -> None:
        body = codec.decode(message.payload, message.content_type)
        kind = body.get("kind") if isinstance(body, dict) else None
        if kind == "readings":
            names = body["signals"]
            for i, v in zip(
                np.asarray(body["sig"]).tolist(), np.asarray(body["value"]).tolist(), strict=False
            ):
                self.values[names[i]] = v
        elif kind == "results":
            res = ResultBatch.from_wire(body)
            self.scores += zip(
                res.t.tolist(), np.asarray(res.outputs["score"], float).tolist(), strict=True
            )
        elif kind == "event":
            self.events.append(body)

    async def on_cloud(self, message: Received) -> None:
        body = codec.decode(message.payload, message.content_type)
        if isinstance(body, dict) and body.get("kind") == "results":
            self.cloud_results += len(body.get("t", []))


@contextlib.asynccontextmanager
async def connected(settings: BrokerSettings, handler: Any, *filters: str) -> AsyncIterator[None]:
    conn = MqttConnection(settings, handler)
    task = asyncio.create_task(conn.run())
    try:
        await asyncio.wait_for(conn.wait_connected(), 10)
        for f in filters:
            await conn.subscribe(f, 0)
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Demo:
    def __init__(
        self, workdir: Path, phases: Phases, duration: float | None, keep_running: bool
    ) -> None:
        self.workdir, self.phases, self.duration = workdir, phases, duration
        self.keep_running = keep_running
        self.stop = asyncio.Event()
        self.t0 = clock.monotonic()
        self.c = Colours(sys.stdout.isatty())
        self.live = Live()
        self.lamp_on_at: float | None = None
        self.lamp_off_at: float | None = None
        self.lamp_off_by_safe_state = False  # the lamp went off because the site was stopping
        self.stopping_site = False
        self.fault_at: float | None = None
        self.fault_ns: tuple[int, int] | None = None
        self.site_up_at: float | None = None

    def say(self, text: str) -> None:
        print(f"{self.c(f'[{self.elapsed():5.1f}s]', '2')} {text}", flush=True)

    def elapsed(self) -> float:
        return clock.monotonic() - self.t0

    def _signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)

    async def pause(self, seconds: float) -> bool:
        """Wait, unless stopped; True if the demo goes on."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
        return not self.stop.is_set()

    async def run(self) -> int:
        self._signals()
        if self.duration is not None:
            asyncio.get_running_loop().call_later(self.duration, self.stop.set)
        site_broker = LocalBroker(self.workdir / "broker", port=free_port())
        cloud_broker = LocalBroker(self.workdir / "cloud-broker", port=free_port())
        await asyncio.to_thread(site_broker.start)
        await asyncio.to_thread(cloud_broker.start)
        try:
            async with PlantSimulator(seed=7, opcua=False) as sim:
                self.say(
                    f"site broker on 127.0.0.1:{site_broker.port}, cloud broker on "
                    f"127.0.0.1:{cloud_broker.port}, plant simulator (Modbus) on "
                    f"127.0.0.1:{sim.modbus_port}"
                )
                sim.tick_hooks.append(self._watch_lamp)
                await self._story(sim, site_broker.port, cloud_broker.port)
        finally:
            await asyncio.to_thread(cloud_broker.stop)
            await asyncio.to_thread(site_broker.stop)
        self._summary()
        return 0

    def _watch_lamp(self, sim: PlantSimulator, _values: dict[str, float]) -> None:
        lamp = sim.state.commands.alarm_lamp
        if lamp and self.lamp_on_at is None:
            self.lamp_on_at = self.elapsed()
        if not lamp and self.lamp_on_at is not None and self.lamp_off_at is None:
            self.lamp_off_at = self.elapsed()
            self.lamp_off_by_safe_state = self.stopping_site

    def _status(self, change: StatusChange) -> None:
        routine = change.state == "terminated" and change.detail.endswith("exit code 0")
        if change.state not in ("online", "starting", "stopped") and not routine:
            self.say(f"{change.instance}: {change.state} {change.detail}")

    async def _story(self, sim: PlantSimulator, port: int, cloud_port: int) -> None:
        ph = self.phases
        modbus_port = sim.modbus_port
        assert modbus_port is not None
        rec_site = write_site(self.workdir, "site-record.yaml", port, modbus_port, [])
        recording = self.workdir / "normal.csv"
        self.say(f"recording {ph.record:.0f} s of normal operation (edgefleet record) ...")
        async with running_site(rec_site, self.workdir / "record-site", self._status):
            began = clock.monotonic()
            rec = await record(
                load_flow(EXAMPLES / "pump-anomaly.yaml"),
                recording,
                site=SITE,
                port=port,
                duration_s=ph.record,
                stop=self.stop,
            )
            if clock.monotonic() - began < ph.record - 0.5:
                self.stop.set()  # the recorder took the Ctrl-C
            self._signals()
        if self.stop.is_set():
            return
        self.say(f"recorded {rec.rows} samples to {recording}")
        model = self.workdir / "pump-anomaly.onnx"
        t = clock.monotonic()
        trained = await asyncio.to_thread(train, recording, model)
        threshold = self.live.threshold = trained["threshold"]
        self.say(
            f"trained examples/train_pump_model.py on {trained['rows']} samples in "
            f"{clock.monotonic() - t:.1f} s: threshold {threshold:.3f} (held-out score: median "
            f"{trained['held_out_score_p50']:.2f}, max {trained['held_out_score_max']:.2f})"
        )
        write_flow(self.workdir, model, threshold, cloud_port)
        site = write_site(self.workdir, "site.yaml", port, modbus_port, [f"flows/{FLOW}.yaml"])
        self.say("starting the site: modbus, aligner, inference, actuator, forwarder ...")
        topics = Topics(SITE)
        async with (
            running_site(site, self.workdir / "site", self._status),
            connected(BrokerSettings(port=port), self.live.on_site, topics.raw(SOURCE),
                      topics.results(FLOW), topics.events(FLOW)),
            connected(BrokerSettings(port=cloud_port), self.live.on_cloud,
                      every_site(Kind.RESULTS)),
        ):  # fmt: skip
            self.site_up_at = self.elapsed()
            self.say(
                f"site online (logs in {self.workdir / 'site' / 'logs'}); live view, Ctrl-C stops"
            )
            await self._live(sim)
            self.stopping_site = True  # from here, a lamp going off is the actuator's safe state
        self.say("site stopped")

    async def _live(self, sim: PlantSimulator) -> None:
        ph = self.phases
        start = clock.monotonic()
        inject_at = ph.normal
        end_at = ph.normal + ph.fault + ph.after
        next_line = start + 1.0
        while not self.stop.is_set():
            now = clock.monotonic() - start
            if self.fault_at is None and now >= inject_at:
                sim.inject("cavitation", ph.fault)
                self.fault_at = self.elapsed()
                t_ns = clock.now_ns()
                self.fault_ns = (t_ns, t_ns + int(ph.fault * 1e9))
                self.say(self.c(f"injecting cavitation for {ph.fault:.0f} s", "1;33"))
            if now >= end_at and not self.keep_running:
                return
            if not await self.pause(max(0.0, next_line - clock.monotonic())):
                return
            next_line += 1.0
            print(self._line(sim), flush=True)

    def _line(self, sim: PlantSimulator) -> str:
        v, c = self.live.values, self.c
        score = self.live.scores[-1][1] if self.live.scores else float("nan")
        filled = 0 if np.isnan(score) else min(BAR, round(score * BAR))
        anomaly = score > self.live.threshold
        bar = "█" * filled + "·" * (BAR - filled)
        bar = c(bar, "31" if anomaly else "33" if score > 0.5 * self.live.threshold else "32")
        flag = c(" ANOMALY", "1;31") if anomaly else "        "
        lamp = c("LAMP ON ", "1;41;97") if sim.state.commands.alarm_lamp else "lamp off"
        faults = ",".join(sim.state.active_faults()) or "-"

        def g(name: str, fmt: str) -> str:
            x = v.get(name)
            return "  --  " if x is None else format(x, fmt)

        return (
            f"{c(f'[{self.elapsed():5.1f}s]', '2')} suction {g('suction_pressure', '5.2f')} bar  "
            f"discharge {g('discharge_pressure', '5.2f')} bar  flow {g('flow', '5.1f')} m3/h  "
            f"vib {g('vibration', '4.2f')} mm/s  score {score:4.2f} {bar}{flag}  {lamp}  "
            f"fault: {faults}"
        )

    def _history_rows(self) -> int:
        path = self.workdir / "history.db"
        if not path.exists():
            return 0
        with contextlib.closing(sqlite3.connect(path)) as db:
            return int(db.execute("SELECT count(*) FROM results").fetchone()[0])

    def _summary(self) -> None:
        scores = self.live.scores
        lines = [f"edgefleet demo: stopped after {self.elapsed():.0f} s; nothing left running."]
        if self.fault_ns is not None and scores:
            t = np.array([s[0] for s in scores])
            sc = np.array([s[1] for s in scores])
            before, during = (
                sc[t < self.fault_ns[0]],
                sc[(t >= self.fault_ns[0]) & (t < self.fault_ns[1])],
            )
            if before.size:
                lines.append(
                    f"score before the fault: median {np.median(before):.2f}, "
                    f"max {before.max():.2f}"
                )
            if during.size:
                lines.append(
                    f"score during the fault: median {np.median(during):.2f}, "
                    f"max {during.max():.2f} "
                    f"(threshold {self.live.threshold:.3f})"
                )
        if self.fault_at is not None and self.lamp_on_at is not None:
            lines.append(
                "anomaly detected: alarm lamp set "
                f"{self.lamp_on_at - self.fault_at:.1f} s after the fault began, "
                f"{self.lamp_on_at:.0f} s after the demo started"
            )
            if self.lamp_off_at is not None:
                why = (
                    "by the actuator's safe state as the site stopped"
                    if self.lamp_off_by_safe_state
                    else "after the fault"
                )
                lines.append(f"alarm lamp reset {why}, at {self.lamp_off_at:.0f} s")
        elif self.fault_at is not None:
            lines.append("the alarm lamp was not set")
        acted = sum(1 for e in self.live.events if e.get("decision") == "acted")
        lines.append(
            f"results: {len(scores)} on the site broker, {self._history_rows()} in the SQLite "
            f"history ({self.workdir / 'history.db'}), {self.live.cloud_results} delivered to "
            "the cloud broker; "
            f"actuator writes: {acted}"
        )
        print("\n".join(lines), flush=True)


def run_single(workdir: Path, duration: float | None = None, fast: bool = False) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    for name in FRESH:  # a fresh site every time: no old queue, history or recording
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    demo = Demo(workdir, FAST if fast else STORY, duration, keep_running=not fast)
    return asyncio.run(demo.run())
