"""Run a whole site as processes: `edgefleet up site.yaml`, and the Python API behind it.

    stop = asyncio.Event()
    await run_site(Path("site.yaml"), Path("var/site"), stop, on_status=print)

or, to watch and act on the instances while they run:

    async with SiteSupervisor(load_site(Path("site.yaml")), Path("var/site")) as sup:
        await sup.wait_online(timeout=30)
        print(sup.instances["modbus-plc1"].pid, sup.broker_port)
        ...                                   # leaving the block stops everything

What it does:
- writes each instance's config to `{workdir}/config/{instance}.yaml` and starts it as
  `python -m edgefleet.cli run SERVICE --config FILE` in a session of its own (a Ctrl-C in the
  terminal reaches the supervisor only, which then stops the instances in order); output goes
  to `{workdir}/logs/{instance}.log`; the forwarder first, the others once it is online, so its
  persistent session holds their results from the first (`_start_in_order`);
- with `broker.start_local: true` starts a mosquitto first (persistence in `{workdir}/broker`)
  and stops it last, and supervises it (`sitebroker.py`): a death is a `broker exited` line
  and every running instance is shown `waiting` for the broker until it reports `online` to
  the new one; the broker is started again with the same backoff as an instance, on the same
  port and persistence, and a start that fails is a `broker failed` line saying why, retried;
- restarts an instance that exits, after a capped exponential delay (`supervisor:` in
  site.yaml) that is reset once the instance has stayed up `stable_after_s`; an instance that
  exits with `RESTART_EXIT_CODE` (75: a newer retained `config/{instance}` changes keys it
  cannot change live) is restarted at once with that revision merged into its config file;
- follows `ef/{site}/status/+` and reports every change of an instance's state to `on_status`:
  the services' own states (`online`, `stopped`, `offline`) and the supervisor's (`starting`,
  `exited`, `restarting`, `killed`, `terminated`, `waiting`);
- `stop()`: SIGTERM to the actuators first (they take their safe state through the adapters),
  then to the others; SIGKILL to any still running after `stop_timeout_s`; then the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import yaml

from edgefleet.flow import FlowSpec
from edgefleet.registry import service_spec
from edgefleet.site.derive import Instance, derive
from edgefleet.site.load import LoadedSite, load_site
from edgefleet.site.metrics import SUPERVISOR, Process, SiteCollector, StatusBook, roles
from edgefleet.site.orphans import PidFile, die_with_parent
from edgefleet.site.sitebroker import BrokerState, SupervisedBroker, fleet_bridge, port_free
from shared import clock, codec
from shared.config import overlay
from shared.errors import ConfigError
from shared.files import remove_stale_temporaries, write_atomic
from shared.messages import ConfigUpdate, Status
from shared.metrics import MetricsServer
from shared.mqtt import MqttConnection, Received
from shared.retry import Backoff
from shared.service import RESTART_EXIT_CODE
from shared.topics import Kind, Topics, parse

if TYPE_CHECKING:
    from edgefleet.agent.agent import Agent

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the folder holding `edgefleet`, `services`, `shared`


@dataclass(frozen=True)
class StatusChange:
    """One change of an instance's state, as `on_status` receives it."""

    instance: str
    # starting | online | stopped | offline | exited | restarting | killed | terminated | waiting
    # (the broker: starting | online | exited | restarting | failed | stopped)
    state: str
    detail: str = ""  # e.g. "pid 1234", "exit code 1, restart 2 in 0.8 s"
    t: float = field(default_factory=time.time)  # wall clock, seconds

    def line(self) -> str:
        """One readable line: `12:00:01  modbus-plc1          online      pid 1234`."""
        clock = time.strftime("%H:%M:%S", time.localtime(self.t))
        return f"{clock}  {self.instance:<28} {self.state:<11} {self.detail}".rstrip()


StatusCallback = Callable[[StatusChange], None]


@dataclass(frozen=True)
class Reconciled:
    """What `reconcile` did, by instance name."""

    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    swapped: list[str] = field(default_factory=list)  # hot swap through config/{instance}
    unchanged: list[str] = field(default_factory=list)


@dataclass
class InstanceState:
    """What the supervisor knows of one instance."""

    name: str
    service: str
    config_file: Path
    log_file: Path
    pid: int | None = None  # of the running process, None between runs
    restarts: int = 0  # how many times it was started again after exiting
    state: str = "new"  # the last state reported (see StatusChange.state)
    exit_codes: list[int] = field(default_factory=list)  # of every run that ended
    started: float = 0.0  # clock.monotonic() at the current run's start
    started_ns: int = 0  # the same moment, wall clock (statuses carry wall-clock times)
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    retired: bool = False  # removed or replaced by a reconcile: never started again

    @property
    def online(self) -> bool:
        return self.state == "online"


class SiteSupervisor:
    """Starts, watches, restarts and stops every instance of one site.

    `site`: a `LoadedSite` (from `load_site`) or the path of a site.yaml. `broker_port`
    overrides the port of site.yaml (e.g. a free one, for a local broker). `on_status` is
    called, in the event loop, for every state change; it must not block.
    """

    def __init__(
        self,
        site: LoadedSite | Path,
        workdir: Path,
        *,
        on_status: StatusCallback | None = None,
        broker_port: int | None = None,
        only: list[str] | None = None,
    ) -> None:
        self.site = site if isinstance(site, LoadedSite) else load_site(Path(site))
        self.only = only  # run just these instances (one container each), never a local broker
        self.workdir = Path(workdir).resolve()
        self.on_status = on_status
        spec = self.site.spec
        if broker_port is not None:
            broker = spec.broker.model_copy(update={"port": broker_port})
            self.site.spec = spec = spec.model_copy(update={"broker": broker})
        self.settings = spec.supervisor
        self.topics = Topics(spec.site, spec.prefix)
        self.specs: dict[str, Instance] = self.site.instances()
        if only is not None:
            unknown = sorted(set(only) - set(self.specs))
            if unknown:
                raise ConfigError(
                    f"--only: no instance {', '.join(unknown)} in this site; "
                    f"it has {', '.join(sorted(self.specs))}"
                )
            self.specs = {name: self.specs[name] for name in only}
        self.instances: dict[str, InstanceState] = {
            name: self._new_state(name, inst) for name, inst in self.specs.items()
        }
        self.deployed: list[FlowSpec] = []  # flows of the agent's revision, beside site.yaml's
        self.agent: Agent | None = None
        self._started = False
        self._runners: dict[str, asyncio.Task[None]] = {}
        self.broker: BrokerState | None = None  # the local broker's state while it is ours
        self._broker: SupervisedBroker | None = None
        self._broker_since_ns = 0  # the broker's last start or death (wall clock): older is stale
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._status: MqttConnection | None = None
        self._changed = asyncio.Condition()
        self.book = StatusBook()  # every instance's latest status, for /metrics
        self.metrics: MetricsServer | None = None
        # per instance, the retained configs seen since its file was written: the newest
        # revision with the keys of every one (each is laid over the running config)
        self._configs: dict[str, ConfigUpdate] = {}
        self.pids = PidFile(self.workdir)  # what a SIGKILLed `up` left running: orphans.py

    # ------------------------------------------------------------------ public API

    @property
    def broker_host(self) -> str:
        return self.site.spec.broker.host

    @property
    def broker_port(self) -> int:
        return self.site.spec.broker.port

    def _new_state(self, name: str, inst: Instance) -> InstanceState:
        return InstanceState(
            name,
            inst.service,
            self.workdir / "config" / f"{name}.yaml",
            self.workdir / "logs" / f"{name}.log",
        )

    def derive(
        self, deployed: list[FlowSpec], files: dict[str, str] | None = None
    ) -> dict[str, Instance]:
        """The instances of site.yaml's sources and flows plus `deployed` flows (`ConfigError`
        lists every error, e.g. a deployed flow named like one of site.yaml's)."""
        origin = dataclasses.replace(
            self.site.origin, flow_files={**self.site.origin.flow_files, **(files or {})}
        )
        return derive(self.site.spec, [*self.site.flows, *deployed], origin)

    async def reconcile(
        self, deployed: list[FlowSpec], files: dict[str, str] | None = None
    ) -> Reconciled:
        """Run site.yaml's instances plus those of `deployed` flows: an instance whose config
        is unchanged is not touched, a new one is started, a removed one stopped (actuators
        first, so they take their safe state while the adapters still run), a changed one
        stopped and started with its new config. `ConfigError` before anything changes."""
        wanted = self.derive(deployed, files)
        if self.only is not None:
            wanted = {n: i for n, i in wanted.items() if n in self.only}
        gone = [n for n in self.specs if n not in wanted]
        changed = [n for n, i in wanted.items() if n in self.specs and _differs(self.specs[n], i)]
        new = [n for n in wanted if n not in self.specs]
        swapped = [n for n in changed if self._started and _hot(self.specs[n], wanted[n])]
        changed = [n for n in changed if n not in swapped]
        result = Reconciled(
            started=new,
            stopped=gone,
            replaced=changed,
            swapped=swapped,
            unchanged=[n for n in wanted if n in self.specs and n not in (*changed, *swapped)],
        )
        self.deployed = list(deployed)
        old = self.specs
        self.specs = wanted
        if not self._started:  # before start(): only what will be started changes
            self.instances = {n: self._new_state(n, i) for n, i in wanted.items()}
            return result
        leaving = [self.instances[n] for n in (*gone, *changed)]
        for tier in (
            [s for s in leaving if s.service == "actuator"],
            [s for s in leaving if s.service != "actuator"],
        ):
            for state in tier:
                state.retired = True
            await asyncio.gather(*(self._terminate(s) for s in tier))
        for name in gone:
            del self.instances[name]
            self._runners.pop(name, None)
            self._emit(name, "removed", f"was {old[name].service}")
        for name in (*changed, *new):
            self.instances[name] = self._new_state(name, wanted[name])
            self._write_config(name)
        await self._start_in_order([*changed, *new])
        for name in swapped:
            await self._hot_swap(name)
        return result

    async def _hot_swap(self, name: str) -> None:
        """The instance takes its new config from the retained `config/{name}` without a
        restart (the inference service swaps a model with no sample lost). The revision only
        grows and is kept on disk: every config file written afterwards carries it, so the
        retained config never overrides a config the instance was started with."""
        revisions = self._revisions()
        seen = self._configs.get(name)
        revision = revisions[name] = max(revisions.get(name, 0), seen.revision if seen else 0) + 1
        write_atomic(self._revisions_file, json.dumps(revisions).encode())
        self._write_config(name)
        update = ConfigUpdate(instance=name, revision=revision, config=self._full(name))
        payload, content_type = codec.encode(update.to_wire())
        assert self._status is not None, "start() first"
        result = await self._status.publish(
            self.topics.config(name), payload, content_type=content_type, qos=1, retain=True
        )
        if not result.ok:
            raise ConfigError(f"{name}: the broker refused its new config: {result.reason}")
        self._emit(name, "swapping", f"config revision {revision}")

    def _full(self, name: str) -> dict[str, Any]:
        """The instance's config with every live key it leaves out at its default: a service
        lays an update over what it runs, so a key the flow no longer has (a shadow model, a
        script) would otherwise stay as it was."""
        instance = self.specs[name]
        spec = service_spec(instance.service)
        defaults = spec.config.model_construct().model_dump(mode="json", warnings=False)
        cleared = {k: defaults[k] for k in spec.live_keys if k in defaults}
        return {**cleared, **instance.config}

    @property
    def _revisions_file(self) -> Path:
        return self.workdir / "config" / "revisions.json"

    def _revisions(self) -> dict[str, int]:
        """Per instance, the revision of the last config published retained for it."""
        try:
            data = json.loads(self._revisions_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _run(self, state: InstanceState) -> None:
        task = asyncio.create_task(self._keep_running(state), name=state.name)
        self._runners[state.name] = task
        self._tasks.append(task)

    async def _start_in_order(self, names: list[str]) -> None:
        """The forwarder first, the others once it is online: results published before its
        persistent session exists on the broker would go nowhere (a fresh site lost its first
        results so). A forwarder that does not come online within `forwarder_first_s` (a bad
        sink config, say) must not keep the flows and their actuators from running: they start
        then, and a line says what may be lost."""
        first = [n for n in names if self.instances[n].service == "forwarder"]
        for name in first:
            self._run(self.instances[name])
        if first:
            try:
                await self.wait_online(self.settings.forwarder_first_s, first)
            except TimeoutError:
                self._emit(
                    first[0],
                    self.instances[first[0]].state,
                    f"not online {self.settings.forwarder_first_s:g} s after its start: the "
                    "flows start without it; results before its session exists are not kept",
                )
        for name in names:
            if name not in first:
                self._run(self.instances[name])

    async def start(self) -> None:
        """Write the configs, start the local broker if asked, then every instance (and the
        agent, when site.yaml has a `fleet:` section)."""
        reaped = await asyncio.to_thread(self.pids.reap, self.settings.stop_timeout_s)
        for name in reaped:
            self._emit(name, "reaped", "outlived the previous up on this workdir; stopped")
        # what a write cut short (SIGKILL, power cut) left: the reaped writers are gone now
        await asyncio.to_thread(remove_stale_temporaries, self.workdir, recursive=True)
        if self.site.spec.fleet is not None and self.only is None and self.agent is None:
            from edgefleet.agent.agent import Agent  # the agent needs the supervisor's types

            self.agent = Agent(self)
            await self.agent.recover()  # its current revision's flows start with the site
        self.write_configs()
        spec = self.site.spec
        if spec.broker.start_local and self.only is None:
            if not port_free("127.0.0.1", spec.broker.port):
                raise ConfigError(
                    f"broker.port: {spec.broker.port} is in use; start_local needs a free port"
                )
            self._broker = SupervisedBroker(
                self.workdir / "broker",
                spec.broker.port,
                self.settings,
                lambda new, detail: self._emit("broker", new, detail),
                on_down=self._broker_down,
                on_up=self._broker_up,
                extra_config=fleet_bridge(spec),
                pids=self.pids,
            )
            self.broker = self._broker.state
            await self._broker.start()
            self._tasks.append(asyncio.create_task(self._broker.run(), name="broker"))
        await self._watch_status()
        self._serve_metrics()
        self._started = True
        await self._start_in_order(list(self.instances))
        if self.agent is not None:
            await self.agent.start()

    async def stop(self) -> None:
        """Stop every instance (actuators first), then the status watcher and the broker."""
        if self._stopping:
            return
        self._stopping = True
        if self.agent is not None:
            await self.agent.stop()
        first = [s for s in self.instances.values() if s.service == "actuator"]
        rest = [s for s in self.instances.values() if s.service != "actuator"]
        for tier in (first, rest):
            await asyncio.gather(*(self._terminate(s) for s in tier))
        tasks = [*self._tasks, *([self._status_task] if self._status_task else [])]
        for task in tasks:
            task.cancel()
        if tasks:  # bounded: a stop must end even if a task ignores its cancellation
            _, stuck = await asyncio.wait(tasks, timeout=self.settings.stop_timeout_s)
            for task in stuck:
                log.warning("site %s: task %s did not stop", self.site.spec.site, task.get_name())
        self._tasks.clear()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)  # waits for its serving thread
            self.metrics = None
        if self._broker is not None:
            await self._broker.stop()
            self._broker = self.broker = None

    def _serve_metrics(self) -> None:
        """`/metrics` of the whole site (site.yaml `metrics:`); not from an `--only` part."""
        settings = self.site.spec.metrics
        if settings is None or self.only is not None:
            return
        collector = SiteCollector(
            self.site.spec.site, self.book, lambda: roles(self.specs), self._processes
        )
        self.metrics = MetricsServer(collector, settings)
        self.metrics.start()

    def _processes(self) -> dict[str, Process]:
        """Every process this supervisor runs, by instance (read from a scrape's thread)."""
        out = {
            name: Process(st.pid, st.restarts, st.service)
            for name, st in list(self.instances.items())
        }
        out["supervisor"] = SUPERVISOR
        if self.broker is not None:
            out["broker"] = Process(self.broker.pid, self.broker.restarts, "mosquitto")
        return out

    async def wait_online(self, timeout: float = 30.0, names: list[str] | None = None) -> None:
        """Wait until every instance (or those named) last reported `online`."""
        wanted = names or list(self.instances)
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: all(self.instances[n].online for n in wanted))

    async def wait_state(self, name: str, state: str, timeout: float = 30.0) -> None:
        """Wait until instance `name` reports `state` (e.g. `online` again after a restart)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.instances[name].state == state)

    async def wait_watching(self, timeout: float = 10.0) -> None:
        """Wait until the supervisor follows the site's topics (status, and with a local broker
        config, desired and reported) on the broker."""
        assert self._status is not None, "start() first"
        await asyncio.wait_for(self._status.wait_connected(), timeout)

    def write_configs(self) -> None:
        """Write every instance's config YAML into `{workdir}/config/`."""
        for name in self.specs:
            self._write_config(name)

    def _write_config(self, name: str, update: ConfigUpdate | None = None) -> None:
        """The derived config; with `update`, that retained revision merged on top (as the
        instance merges it), so the restarted instance runs it."""
        path = self.instances[name].config_file
        path.parent.mkdir(parents=True, exist_ok=True)
        config = dict(self.specs[name].config)
        revision = self._revisions().get(name)
        seen = self._configs.pop(name, None) if update is None else None
        if seen is not None:  # a new config of the site's own: it wins over what came retained
            revision = max(revision or 0, seen.revision)
        if revision is not None:  # a retained config of that revision exists: not newer
            config["revision"] = revision
        if update is not None:
            config = overlay(config, update.config, update.revision)
        write_atomic(path, yaml.safe_dump(config, sort_keys=False).encode())

    def _file_revision(self, state: InstanceState) -> int:
        try:
            data = yaml.safe_load(state.config_file.read_text())
        except (OSError, yaml.YAMLError):
            return 0
        value = data.get("revision", 0) if isinstance(data, dict) else 0
        return value if isinstance(value, int) else 0

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ processes

    def _command(self, state: InstanceState) -> list[str]:
        return [sys.executable, "-m", "edgefleet.cli", "run", state.service, "--config",
                str(state.config_file)]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def _spawn(self, state: InstanceState) -> asyncio.subprocess.Process:
        state.log_file.parent.mkdir(parents=True, exist_ok=True)
        with state.log_file.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *self._command(state),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us in order
                preexec_fn=die_with_parent,  # and a SIGKILLed supervisor still stops us
            )
        self.pids.add(state.name, process.pid)
        state.process, state.pid = process, process.pid
        state.started, state.started_ns = clock.monotonic(), clock.now_ns()
        return process

    async def _keep_running(self, state: InstanceState) -> None:
        s = self.settings
        backoff = Backoff(s.restart_initial_s, s.restart_max_s)
        while not self._stopping and not state.retired:
            process = await self._spawn(state)
            self._set(state, "starting", f"pid {process.pid}")
            code = await process.wait()
            self.pids.remove(state.name)
            state.pid, state.process = None, None
            state.exit_codes.append(code)
            if self._stopping or state.retired:
                return
            update = self._configs.get(state.name)
            if (
                code == RESTART_EXIT_CODE
                and update is not None
                and update.revision > self._file_revision(state)
            ):
                # not a failure: the instance stopped to run a newer config; no backoff
                self._write_config(state.name, update)
                state.restarts += 1
                self._set(state, "restarting", f"config revision {update.revision}")
                continue
            if clock.monotonic() - state.started >= s.stable_after_s:
                backoff.reset()
            delay = backoff.next_delay()
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            self._set(state, "exited", f"{how}; restart {state.restarts + 1} in {delay:.1f} s")
            await asyncio.sleep(delay)
            if state.retired:
                return
            state.restarts += 1
            self._set(state, "restarting", f"restart {state.restarts}")

    async def _terminate(self, state: InstanceState) -> None:
        process = state.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.settings.stop_timeout_s)
            self._set(state, "terminated", f"exit code {process.returncode}")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(TimeoutError):  # SIGKILL cannot be refused: do not hang
                await asyncio.wait_for(process.wait(), self.settings.stop_timeout_s)
            self._set(state, "killed", f"no exit {self.settings.stop_timeout_s:g} s after SIGTERM")

    # ------------------------------------------------------------------ status

    _status_task: asyncio.Task[None] | None = None

    async def _watch_status(self) -> None:
        settings = self.site.spec.broker.settings(
            f"{self.site.spec.site}-up-{os.getpid()}",
            reconnect_initial_s=0.1,
            reconnect_max_s=2.0,
            # the connect timeout is max(5 s, keepalive): a peer that is not our broker (another
            # program on its port) holds a connect attempt that long before a retry
            keepalive_s=min(self.site.spec.broker.keepalive_s, 5),
        )
        self._status = MqttConnection(settings, self._on_message)
        await self._status.subscribe(self.topics.all_of(Kind.STATUS), qos=1)
        # the retained configs: an instance that exits for a newer one is restarted with it
        await self._status.subscribe(self.topics.all_of(Kind.CONFIG), qos=1)
        if self._broker is not None:  # what must survive a crash of our broker: see _on_message
            for topic_filter in (self.topics.desired(), self.topics.reported()):
                await self._status.subscribe(topic_filter, qos=1)
            self._status.on_connect(self._save_on_connect)
        self._status_task = asyncio.create_task(self._status.run(), name="status_loop")

    async def _save_on_connect(self) -> None:
        # what was published while we were not subscribed (a broker just started, our
        # reconnect still to come) we never see: have it saved now that we follow again
        if self._broker is not None:
            self._broker.save()

    async def _on_message(self, message: Received) -> None:
        try:
            parsed = parse(message.topic)
        except Exception:  # a foreign topic: not ours to judge
            return
        if parsed.kind is Kind.CONFIG:
            self._note_config(message, parsed.name or "")
        if parsed.kind is not Kind.STATUS:
            if self._broker is not None and not message.retain:
                # a new config, desired or reported state: have the broker write it to disk now
                # rather than at its next autosave, so a crash does not take it back
                self._broker.save()
            return
        try:
            status = Status.from_wire(codec.decode(message.payload, message.content_type))
        except Exception:  # a foreign message on our status topic: not ours to judge
            return
        if parsed.name:
            self.book.put(parsed.name, status)
        restored = message.retain and status.t < self._broker_since_ns
        if restored and status.state == "online" and not self._alive(parsed.name or ""):
            await self._leave_will(parsed.name or "", status)
            return
        state = self.instances.get(parsed.name or "")
        if state is None or state.pid is None:
            return
        if status.t < state.started_ns - 1_000_000_000:
            return  # retained from an earlier run
        earlier = status.t < self._broker_since_ns  # said to the broker's previous run
        if earlier and (message.retain or status.state == "online"):
            # restored by a restarted broker, or an `online` that was in flight when the old
            # one died and is read only now: the instance has not spoken to this one yet (a
            # last will comes live, with the time of the instance's start: it is news)
            return
        new = status.state
        if new != state.state:
            self._set(state, new, f"pid {state.pid}")

    def _alive(self, name: str) -> bool:
        """Whether a process of ours runs (or is about to run) as `name`: it speaks for itself
        on the restarted broker, and an `offline` of ours could land after its `online`."""
        if self.agent is not None and name == self.agent.rt.instance:
            return self.agent.alive
        state = self.instances.get(name)
        return state is not None and state.pid is not None

    async def _leave_will(self, name: str, stale: Status) -> None:
        """A restarted broker restored `online` for an instance that is not running (it died
        with the broker, or is no longer in site.yaml): its last will died with the old broker,
        so leave it now, retained, or the site (and the fleet, over the bridge) would show a
        dead instance online for good. Same `t` as the stale status: a will is about that run."""
        gone = stale.model_copy(update={"state": "offline", "health": {}})
        payload, content_type = codec.encode(gone.to_wire())
        assert self._status is not None
        await self._status.publish(
            self.topics.status(name), payload, content_type=content_type, qos=1, retain=True
        )
        log.info(
            "site %s: %s said online to the broker's last run; offline now",
            self.site.spec.site,
            name,
        )
        if self._broker is not None:
            self._broker.save()

    def _note_config(self, message: Received, name: str) -> None:
        try:
            update = ConfigUpdate.from_wire(codec.decode(message.payload, message.content_type))
        except Exception:  # the instance itself reports a malformed config: not ours to judge
            return
        seen = self._configs.get(name)
        if update.instance != name or (seen is not None and update.revision <= seen.revision):
            return
        if seen is not None:  # the instance laid each over the one before: so do we
            update = update.model_copy(update={"config": {**seen.config, **update.config}})
        self._configs[name] = update

    def _set(self, state: InstanceState, new: str, detail: str = "") -> None:
        state.state = new
        self._emit(state.name, new, detail)
        if new == "online" and self._broker is not None:
            self._broker.save()  # its session and subscriptions now exist: keep them on disk
        asyncio.get_running_loop().create_task(self._notify())

    def _broker_down(self, why: str) -> None:
        """Every running instance has lost its broker: say so, rather than `online`."""
        # what was said before now was said to the dead broker: an `online` still on its way
        # to us (read after this, under load) is no news of the next one
        self._broker_since_ns = clock.now_ns()
        for state in self.instances.values():
            if state.pid is not None and state.state != "waiting":
                self._set(state, "waiting", f"for the broker ({why}); pid {state.pid}")

    def _broker_up(self) -> None:
        if self.broker is not None:
            self._broker_since_ns = self.broker.started_ns

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _emit(self, name: str, new: str, detail: str = "") -> None:
        change = StatusChange(name, new, detail)
        log.info("%s", change.line())
        if self.on_status is not None:
            try:
                self.on_status(change)
            except Exception:
                log.exception("on_status failed for %s", name)


def _differs(a: Instance, b: Instance) -> bool:
    return (a.service, a.config) != (b.service, b.config)


def _hot(old: Instance, new: Instance) -> bool:
    """Only keys the running service applies live (its `live_keys`) differ."""
    if old.service != new.service:
        return False
    keys = set(old.config) | set(new.config)
    live = service_spec(new.service).live_keys
    return all(old.config.get(k) == new.config.get(k) for k in keys - live)


async def run_site(
    site_path: Path,
    workdir: Path,
    stop: asyncio.Event,
    on_status: StatusCallback | None = None,
    *,
    broker_port: int | None = None,
    only: list[str] | None = None,
) -> SiteSupervisor:
    """Run the site of `site_path` until `stop` is set, then stop everything it started.

    Returns the (stopped) supervisor, whose `instances` tell what ran. Raises `ConfigError`
    (every error of site.yaml and its flows) before anything starts."""
    supervisor = SiteSupervisor(
        load_site(site_path), workdir, on_status=on_status, broker_port=broker_port, only=only
    )
    async with supervisor:
        await stop.wait()
    return supervisor
