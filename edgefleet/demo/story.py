"""`edgefleet demo`: the fleet story, everything started and stopped by itself.

1. the cloud side (`edgefleet cloud up`: broker, SeaweedFS, the fleet service, the console,
   with a user the demo creates) and the pump stations of two plants, each a site of its own
   with its agent, labelled plant=… role=pump; the late one announces itself, then goes offline;
2. normal operation recorded at the first station; the example model trained and pushed to
   the library (features and train stats in its metadata), the flow pushed pinning it;
3. a staged deployment to the group `pumps`: the canary first, then the rest; the late station
   comes online and converges by itself;
4. cavitation at one station: detected, the alarm lamp set through the actuator, the event
   delivered to the cloud by the station's forwarder;
5. a model retrained on two stations' recordings, deployed in shadow, its agreement shown,
   promoted;
6. a broken model version (broken.py: it passes the library's checks and the trial run on
   zeros, and fails on real data) in stages: the canary's health gate fails (no result from
   the new model), its agent rolls back by itself, the rollout stops and the other stations
   are never touched;
7. a summary with figures (printed, and in {workdir}/summary.json).

SIGINT or SIGTERM at any moment stops everything it started (sites, simulators, the cloud).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from edgefleet.broker import free_port
from edgefleet.console.users import Role, Users
from edgefleet.demo.broken import broken_model
from edgefleet.demo.feed import CloudFeed, Scores
from edgefleet.demo.single import EXAMPLES, Colours, connected, train
from edgefleet.demo.stations import FAST_FLEET, FLEET, RunningStation, Station, quiet
from edgefleet.demo.summary import Summary
from edgefleet.fleet.client import FleetClient, connect
from edgefleet.fleet.cloud import CloudProcess
from edgefleet.fleet.errors import FleetError
from edgefleet.flow import load_flow
from edgefleet.record import record
from edgefleet.site.supervisor import StatusChange
from shared import clock
from shared.mqtt import BrokerSettings
from shared.topics import Kind, Topics, every_site

FLOW = "pump-anomaly"
MODEL = "pump-anomaly"
USER = "operator"
STAGED = {"stages": ["1", "100%"], "abort_above": "0"}  # the canary, then the rest
WAIT_S = 300  # the longest any step may take on a loaded machine before the story gives up


@dataclass(frozen=True)
class Plan:
    """The story's stations and the length of its phases (the simulators run in real time)."""

    stations: tuple[Station, ...]
    record_s: float  # normal operation recorded at two stations
    fault_s: float  # cavitation
    compared: int  # samples compared in shadow, per station, before the promotion
    gate_s: float  # each agent's health gate: results from a new model within this


STORY = Plan(FLEET, record_s=40, fault_s=20, compared=100, gate_s=20)
FAST = Plan(FAST_FLEET, record_s=16, fault_s=10, compared=25, gate_s=15)


class Stopped(Exception):
    """The story was interrupted (SIGINT, SIGTERM)."""


class FleetStory:
    def __init__(
        self, workdir: Path, plan: Plan, duration: float | None = None, json: bool = False
    ) -> None:
        self.workdir, self.plan, self.duration, self.json = workdir, plan, duration, json
        self.t0 = clock.monotonic()
        self.c = Colours(sys.stdout.isatty())
        self.cloud_feed = CloudFeed()
        self.summary = Summary(stations=[s.site for s in plan.stations])
        self.stations = [RunningStation(s, workdir / "sites") for s in plan.stations]
        self.interrupted = False

    # ---------------------------------------------------------------- terminal
    def elapsed(self) -> float:
        return clock.monotonic() - self.t0

    def say(self, text: str, colour: str = "") -> None:
        stamp = self.c(f"[{self.elapsed():6.1f}s]", "2")
        print(f"{stamp} {self.c(text, colour) if colour else text}", flush=True)

    def _status(self, site: str) -> Callable[[StatusChange], None]:
        def line(change: StatusChange) -> None:
            if not quiet(change):
                self.say(f"{site}: {change.instance} {change.state} {change.detail}".rstrip())

        return line

    # ---------------------------------------------------------------- the whole run
    async def run(self) -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def interrupt() -> None:
            if not self.interrupted:
                self.interrupted = True
                self.say("interrupted: stopping everything the demo started ...", "1;33")
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        if self.duration is not None:
            loop.call_later(self.duration, interrupt)
        code = 0
        try:
            await self._with_everything()
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
            task.uncancel()
        except (Stopped, FleetError, TimeoutError, RuntimeError) as exc:
            self.say(f"the story stopped: {type(exc).__name__}: {exc}", "1;31")
            code = 1
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        left = [p.pid for p in psutil.Process().children(recursive=True) if p.is_running()]
        self.summary.left_running = left
        self.summary.interrupted = self.interrupted
        self.summary.duration_s = round(self.elapsed(), 1)
        self.summary.write(self.workdir / "summary.json")
        print(self.summary.json() if self.json else self.summary.text(), flush=True)
        return 1 if left else code

    async def _with_everything(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            cloud = await self._cloud(stack)
            client = await stack.enter_async_context(connect(cloud.address))
            await stack.enter_async_context(
                connected(
                    BrokerSettings(port=cloud.port),
                    self.cloud_feed.on_message,
                    every_site(Kind.RESULTS),
                    every_site(Kind.EVENTS),
                )
            )
            stack.push_async_callback(self._close_stations)
            await self._stations(cloud, client)
            await self._story(client)
            self.say("stopping the sites, the simulators and the cloud ...")
        self.say("everything stopped")

    async def _close_stations(self) -> None:
        """All at once: each waits for its services to exit (up to their stop timeout)."""
        await asyncio.gather(*(s.close() for s in self.stations), return_exceptions=True)

    async def _cloud(self, stack: contextlib.AsyncExitStack) -> CloudProcess:
        root = self.workdir / "cloud"
        password = secrets.token_urlsafe(9)
        await asyncio.to_thread(
            Users(root / "console" / "users.db").add, USER, Role.OPERATOR, password, True
        )
        cloud = CloudProcess(root, console_port=free_port(), log=root / "up.log")
        stack.push_async_callback(asyncio.to_thread, cloud.stop)
        self.say("starting the cloud: broker, S3 (SeaweedFS), fleet service, console ...")
        await asyncio.to_thread(cloud.start)
        console = f"http://127.0.0.1:{cloud.console_port}/"
        self.summary.console = console
        self.say(
            f"console {self.c(console, '1;36')}  sign in as {USER} / {password}  "
            f"(fleet broker {cloud.address}, logs in {root / 'logs'})"
        )
        return cloud

    async def _stations(self, cloud: CloudProcess, client: FleetClient) -> None:
        await _serving(client)
        await asyncio.gather(*(s.start_sim() for s in self.stations))
        for s in self.stations:
            s.configure(cloud.port, cloud.key, self.plan.gate_s)
        names = ", ".join(f"{s.name} ({s.station.plant})" for s in self.stations)
        self.say(f"starting {len(self.stations)} pump stations, one site each: {names} ...")
        await asyncio.gather(*(s.start(self._status(s.name)) for s in self.stations))
        await self._until(lambda: self._online(client, {s.name for s in self.stations}))
        group = await client.call("group.create", {"name": "pumps", "selector": "role=pump"})
        members = (await client.call("group.show", {"name": "pumps"}))["group"]["members"]
        self.say(f"group pumps ({group['group']['selector']}): {', '.join(sorted(members))}")
        late = self.late
        await late.stop()
        self.say(f"{late.name} announced itself, then went offline (it comes back later)", "33")

    async def _online(self, client: FleetClient, sites: set[str]) -> bool:
        nodes = (await client.call("node.list"))["nodes"]
        return sites <= {n["site"] for n in nodes if n["online"] == "online"}

    @property
    def late(self) -> RunningStation:
        return next(s for s in self.stations if s.station.late)

    @property
    def fault_station(self) -> RunningStation:
        return [s for s in self.stations if not s.station.late][-1]

    async def _story(self, client: FleetClient) -> None:
        first, second = await self._record()
        v1 = await self._train_and_push(client, first, "trained on one station")
        both = self.workdir / "two-stations.csv"
        both.write_text(first.read_text() + "".join(second.read_text().splitlines(True)[1:]))
        flow = await self._push_flow(client, v1)
        await self._staged_rollout(client, flow["ref"])
        await self._cavitation()
        v2 = await self._train_and_push(client, both, "retrained on two stations")
        promoted = await self._shadow_and_promote(client, flow["ref"], v2)
        await self._broken(client, promoted, Path(v2["path"]))

    # ---------------------------------------------------------------- 2. data and training
    async def _record(self) -> tuple[Path, Path]:
        a, b = self.stations[0], self.fault_station
        self.say(
            f"recording {self.plan.record_s:.0f} s of normal operation at {a.name} and "
            f"{b.name} (edgefleet record) ..."
        )
        flow = load_flow(EXAMPLES / "pump-anomaly.yaml")
        began = clock.monotonic()
        out = [self.workdir / f"normal-{s.name}.csv" for s in (a, b)]
        recs = await asyncio.gather(
            *(
                record(
                    flow,
                    path,
                    site=s.name,
                    port=s.port,
                    duration_s=self.plan.record_s,
                    handle_signals=False,
                )
                for s, path in zip((a, b), out, strict=True)
            )
        )
        self.say(
            f"recorded {recs[0].rows} and {recs[1].rows} samples in "
            f"{clock.monotonic() - began:.0f} s"
        )
        return out[0], out[1]

    async def _train_and_push(self, client: FleetClient, data: Path, why: str) -> dict[str, Any]:
        model = self.workdir / f"{MODEL}-{data.stem}.onnx"
        trained = await asyncio.to_thread(train, data, model)
        pushed = (await client.push(model, MODEL, "model", note=why))["resource"]
        sig = pushed["signature"]
        meta = sig.get("metadata", {})
        stats = "train stats" if "edgefleet.train_stats" in meta or sig.get("train_stats") else ""
        self.say(
            f"trained on {trained['rows']} samples ({why}): threshold {trained['threshold']:.3f}; "
            f"pushed {pushed['ref']} sha256 {pushed['sha256'][:12]}, features "
            f"{', '.join(trained['features'])}{'; with ' + stats if stats else ''}"
        )
        pushed["threshold"], pushed["path"] = trained["threshold"], str(model)
        if self.summary.threshold is None:
            self.summary.threshold = trained["threshold"]
        return dict(pushed)

    async def _push_flow(self, client: FleetClient, model: dict[str, Any]) -> dict[str, Any]:
        """The example flow pinning `model`, its lamp at the model's threshold, and a sink to
        the cloud broker (each station's forwarder delivers its results and events there)."""
        flow = yaml.safe_load((EXAMPLES / "pump-anomaly.yaml").read_text())
        flow["model"] = {"ref": model["ref"]}
        threshold = float(self.summary.threshold or model.get("threshold", 1.0))
        lamp = flow["actions"][0]
        lamp["when"] = f"score > {threshold:.3f}"
        lamp["reset"]["when"] = f"score < {threshold * 0.7:.3f}"
        cloud = self.cloud_broker
        flow["sinks"] = [{"kind": "mqtt", "name": "cloud", "broker": cloud}]
        text = yaml.safe_dump(flow, sort_keys=False)
        view: dict[str, Any] = (
            await client.call("flow.push", {"text": text, "filename": f"{FLOW}.yaml"})
        )["flow"]
        pins = ", ".join(f"{role} {p['ref']}" for role, p in view["pins"].items())
        self.say(f"pushed flow {view['ref']} (pins {pins}; lamp at score > {threshold:.3f})")
        return view

    @property
    def cloud_broker(self) -> dict[str, Any]:
        path = self.stations[0].path
        assert path is not None
        fleet: dict[str, Any] = yaml.safe_load(path.read_text())["fleet"]["broker"]
        return fleet

    # ---------------------------------------------------------------- 3. staged rollout
    async def _staged_rollout(self, client: FleetClient, flow: str) -> None:
        request = {"flows": [flow], "group": "pumps", "strategy": STAGED, "timeout_s": 3600}
        began = clock.monotonic()
        dep = (await client.call("deploy", request))["deployment"]
        self.say(
            f"deploy {flow} to group pumps in stages (canary {self.stations[0].name}, "
            f"then the rest): deployment {dep['id']}"
        )
        converged: dict[str, float] = {}
        late_started: list[float] = []
        others = {s.name for s in self.stations if not s.station.late}

        def progress(states: dict[str, str], shown: dict[str, Any]) -> None:
            for site, state in states.items():
                if state == "applied" and site not in converged:
                    converged[site] = clock.monotonic()
            if others <= set(converged) and not late_started:
                late_started.append(clock.monotonic())

        async def bring_back_late() -> None:
            await self._until_true(lambda: bool(late_started))
            self.say(f"{self.late.name} comes online ...", "33")
            began_late = clock.monotonic()
            await self.late.start(self._status(self.late.name))
            late_started[0] = began_late

        back = asyncio.create_task(bring_back_late())
        try:
            shown = await self._follow(client, dep["id"], progress, lambda s: s != "in_progress")
            await back
        finally:
            back.cancel()
        state = shown["deployment"]["state"]
        self.summary.converge_s = {s: round(t - began, 1) for s, t in sorted(converged.items())}
        self.summary.late = self.late.name
        self.summary.late_converge_s = round(converged[self.late.name] - late_started[0], 1)
        self.summary.rollout = {
            "deployment": dep["id"],
            "state": state,
            "stages": [s["state"] for s in shown["deployment"]["stages"]],
        }
        self.say(
            f"deployment {dep['id']} {state}: every station runs {flow}; {self.late.name} "
            f"converged {self.summary.late_converge_s:.1f} s after it came online",
            "1;32" if state == "succeeded" else "1;31",
        )
        if state != "succeeded":
            raise Stopped(f"the first deployment ended {state}")

    # ---------------------------------------------------------------- 4. cavitation
    async def _cavitation(self) -> None:
        station = self.fault_station
        threshold = float(self.summary.threshold or 1.0)
        scores = Scores(threshold)
        lamp: dict[str, float] = {}

        def watch_lamp(sim: Any, _values: dict[str, float]) -> None:
            on = bool(sim.state.commands.alarm_lamp)
            if on and "on" not in lamp:
                lamp["on"] = clock.monotonic()
                self.say(f"{station.name}: alarm lamp ON (the actuator wrote the coil)", "1;41;97")
            elif not on and "on" in lamp and "off" not in lamp:
                lamp["off"] = clock.monotonic()
                self.say(f"{station.name}: alarm lamp reset")

        topics = Topics(station.name)
        station.sim.tick_hooks.append(watch_lamp)
        try:
            async with connected(
                BrokerSettings(port=station.port), scores.on_message, topics.results(FLOW)
            ):
                await self._until_true(lambda: len(scores.seen) >= 5)
                normal = max(s for _, s in scores.seen)
                fault_s = self.plan.fault_s
                station.sim.inject("cavitation", fault_s)
                at = clock.monotonic()
                self.say(
                    f"{station.name}: injecting cavitation for {fault_s:.0f} s "
                    f"(score so far at most {normal:.2f}, threshold {threshold:.3f})",
                    "1;33",
                )
                await self._until_true(
                    lambda: (
                        scores.first_above(at) is not None
                        and "on" in lamp
                        and self.cloud_feed.acted(station.name, at) is not None
                    )
                )
                detected = scores.first_above(at)
                assert detected is not None
                self.say(
                    f"{station.name}: anomaly detected {detected - at:.1f} s after the fault "
                    f"began; event delivered to the cloud "
                    f"{(self.cloud_feed.acted(station.name, at) or at) - at:.1f} s after it"
                )
                # the fault ends by itself; the actuator resets the lamp once scores are low
                with contextlib.suppress(TimeoutError):
                    await self._until_true(lambda: "off" in lamp, timeout=fault_s + 60)
                median = scores.median(at, at + fault_s)
        finally:
            station.sim.tick_hooks.remove(watch_lamp)
        cloud_at = self.cloud_feed.acted(station.name, at)
        self.summary.detection = {
            "site": station.name,
            "fault": "cavitation",
            "detected_s": round(detected - at, 1),
            "lamp_s": round(lamp["on"] - at, 1),
            "lamp_reset_s": round(lamp["off"] - at - fault_s, 1) if "off" in lamp else None,
            "cloud_event_s": round(cloud_at - at, 1) if cloud_at is not None else None,
            "score_before_max": round(normal, 3),
            "score_during_median": round(median, 3) if median is not None else None,
        }

    # ---------------------------------------------------------------- 5. shadow, promote
    async def _shadow_and_promote(
        self, client: FleetClient, flow: str, candidate: dict[str, Any]
    ) -> str:
        shadowed = await client.call(
            "deploy",
            {"flows": [flow], "group": "pumps", "shadow": candidate["ref"], "timeout_s": WAIT_S},
        )
        dep = shadowed["deployment"]["id"]
        self.say(f"deploy {candidate['ref']} in shadow beside the live model on every pump: {dep}")
        shown = await self._follow(client, dep, None, lambda s: s != "in_progress")
        if shown["deployment"]["state"] != "succeeded":
            raise Stopped(f"the shadow deployment ended {shown['deployment']['state']}")
        want = self.plan.compared
        report: dict[str, Any] = {}

        async def compared() -> bool:
            nonlocal report
            try:
                report = await client.call("shadow.report", {"flow": FLOW, "group": "pumps"})
            except FleetError:
                return False
            nodes = report["nodes"]
            return len(nodes) == len(self.stations) and all(n["compared"] >= want for n in nodes)

        await self._until(compared)
        o = report["overall"]
        self.say(
            f"shadow agreement over {o['compared']} samples on {o['reporting']} stations: "
            f"score correlation {_num(o['score_corr'])}, score difference p99 "
            f"{_num(o['score_diff_p99'])}, {o['decisions_differ']} decisions differ"
            + (f", labels agree {_pct(o['label_agreement'])}" if o["label_agreement"] else "")
        )
        promoted = await client.call(
            "promote", {"flow": FLOW, "group": "pumps", "timeout_s": WAIT_S}
        )
        dep = promoted["deploy"]["deployment"]["id"]
        self.say(
            f"promote: {promoted['flow']} runs {promoted['model']} live (rollback target "
            f"{promoted['previous']}): {dep}"
        )
        shown = await self._follow(client, dep, None, lambda s: s != "in_progress")
        state = shown["deployment"]["state"]
        self.summary.shadow = {
            "model": candidate["ref"],
            "compared": o["compared"],
            "label_agreement": o["label_agreement"],
            "score_corr": o["score_corr"],
            "decisions_differ": o["decisions_differ"],
            "score_diff_p99": o["score_diff_p99"],
            "promoted": promoted["flow"],
            "state": state,
        }
        if state != "succeeded":
            raise Stopped(f"the promotion ended {state}")
        self.say(f"every station runs {promoted['flow']}", "1;32")
        return str(promoted["flow"])

    # ---------------------------------------------------------------- 6. a broken version
    async def _broken(self, client: FleetClient, good: str, good_model: Path) -> None:
        path = broken_model(good_model, self.workdir / f"{MODEL}-broken.onnx")
        model = (await client.push(path, MODEL, "model", note="a broken export"))["resource"]
        self.say(
            f"a broken model: {model['ref']} has the features and train stats of the good one "
            "and runs on zeros (the trial run passes), but fails on every real sample",
            "1;33",
        )
        bad = await self._push_flow(client, model)
        request = {"flows": [bad["ref"]], "group": "pumps", "strategy": STAGED, "timeout_s": WAIT_S}
        began = clock.monotonic()
        dep = (await client.call("deploy", request))["deployment"]
        self.say(f"deploy {bad['ref']} to group pumps in stages: {dep['id']}")
        canary = self.stations[0].name
        rolled: list[float] = []

        def progress(states: dict[str, str], _shown: dict[str, Any]) -> None:
            if states.get(canary) == "rolled_back" and not rolled:
                rolled.append(clock.monotonic())

        shown = await self._follow(client, dep["id"], progress, lambda s: s != "in_progress")
        nodes = {n["site"]: n["state"] for n in shown["nodes"]}
        state, reason = shown["deployment"]["state"], shown["deployment"].get("reason")
        self.say(f"deployment {dep['id']} {state}: {reason}", "1;31" if state == "aborted" else "")

        async def back_on_good() -> bool:
            listed = (await client.call("node.list"))["nodes"]
            flows = {n["site"]: n["flows"] for n in listed}
            return all(flows.get(s.name) == [good] for s in self.stations)

        await self._until(back_on_good)
        listed = (await client.call("node.list"))["nodes"]
        final = {n["site"]: n["flows"] for n in listed if n["site"] in self.summary.stations}
        self.say(
            f"every station runs {good} (the canary rolled back by itself, the others "
            "were never sent the broken version)",
            "1;32",
        )
        self.summary.rollback = {
            "deployment": dep["id"],
            "flow": bad["ref"],
            "state": state,
            "reason": reason,
            "nodes": nodes,
            "canary": canary,
            "rolled_back_s": round(rolled[0] - began, 1) if rolled else None,
        }
        self.summary.final_flows = final
        self.summary.cloud_results = dict(self.cloud_feed.results)
        self.summary.cloud_events = len(self.cloud_feed.events)

    # ---------------------------------------------------------------- waiting
    async def _follow(
        self,
        client: FleetClient,
        deployment: str,
        progress: Callable[[dict[str, str], dict[str, Any]], None] | None,
        done: Callable[[str], bool],
    ) -> dict[str, Any]:
        """Poll the deployment (the fleet announces no change) and print each node's new state."""
        last: dict[str, str] = {}
        shown: dict[str, Any] = {}

        async def ended() -> bool:
            nonlocal shown
            shown = await client.call("deployment.show", {"id": deployment})
            states = {n["site"]: n["state"] for n in shown["nodes"]}
            for site, state in states.items():
                if last.get(site) != state:
                    if site in last or state not in ("waiting", "pending"):
                        self.say(f"{site}: {state}", _colour(state))
                    last[site] = state
            if progress is not None:
                progress(states, shown)
            return done(shown["deployment"]["state"])

        await self._until(ended)
        return shown

    async def _until(self, check: Callable[[], Awaitable[bool]], timeout: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 (the fleet is asked: it sends no event)
                await asyncio.sleep(0.5)

    async def _until_true(self, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
        async def asked() -> bool:
            return check()

        await self._until(asked, timeout)


async def _serving(client: FleetClient) -> None:
    """Until the fleet service answers (it subscribes once connected)."""
    async with asyncio.timeout(60):
        while True:
            try:
                await client.call("library.list", timeout=1)
                return
            except FleetError:
                await asyncio.sleep(0.2)


def _colour(state: str) -> str:
    return {"applied": "32", "rolled_back": "1;31", "failed": "1;31", "skipped": "2"}.get(state, "")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def fresh(workdir: Path) -> None:
    """A fresh story every time: the previous run's cloud, sites and recordings go."""
    for name in ("cloud", "sites"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    for path in workdir.glob("*.csv"):
        path.unlink()
    for path in workdir.glob("*.onnx"):
        path.unlink()
    (workdir / "summary.json").unlink(missing_ok=True)


def run_story(
    workdir: Path, fast: bool = False, duration: float | None = None, json: bool = False
) -> int:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    fresh(workdir)
    # the sites' agents run in this process: their log lines go to a file, the terminal
    # shows one line per event
    logging.basicConfig(
        filename=workdir / "demo.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    story = FleetStory(workdir, FAST if fast else STORY, duration, json)
    return asyncio.run(story.run())
