"""The edge agent: takes the fleet's signed desired state and makes the site run it.

It runs inside `edgefleet up` (the supervisor owns the instances, so activation is a call) as
instance `agent`, with a connection of its own, when site.yaml has a `fleet:` section. For a
retained `desired` it checks signature, key, site and revision (`desired.accept`; a refusal is
reported and changes nothing), then goes through the steps, each saved to its state file and
reported retained on `reported`:

- `received`;
- `downloading`: each blob the cache lacks, by a presigned URL the fleet gives
  (`library.download_url`), sha256-checked (`cache.py`);
- `verifying`: the flow files written to `{workdir}/deployed/{revision}/` with every library
  reference pointing at its cached blob, each model loaded and run once in a separate process
  and checked against its flow (the inference service's own `check_fits`), the site's instances
  derived with the new flows;
- `activating`: the supervisor reconciles (unchanged instances untouched, new ones started,
  removed ones stopped, changed ones replaced), then the health gate: the flow's instances
  online, results on `results/{flow}` from the model the revision pins, no restart, within
  `health_timeout_s`;
- `applied`, or `rolled_back` with the reason (the revision that ran before is reconciled
  again, from the cache and its deployed files: no download, no fleet), or `rollback_failed`
  (it could not run again, nor the one before it: the deployed flows are stopped), or `failed`
  (a step before activation failed: nothing changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import yaml

from edgefleet.agent.cache import BlobCache
from edgefleet.agent.debug import Debugger
from edgefleet.agent.deployed import prune as prune_deployed
from edgefleet.agent.desired import Accepted, Refused, accept
from edgefleet.agent.state import AgentState, Revision, StateFile, Step
from edgefleet.fleet.client import FleetClient
from edgefleet.flow import FlowSpec
from services.inference.config import InferenceSettings
from services.inference.signature import check_fits, inspect_model_async
from services.inference.swap import shadow_settings
from shared import codec
from shared.config import BrokerConfig, ServiceConfig, resolve_paths, validate
from shared.errors import EdgefleetError
from shared.files import write_atomic
from shared.messages import (
    DeployedFlow,
    DesiredState,
    FlowReport,
    PinnedResource,
    ReportedState,
    ResultBatch,
)
from shared.mqtt import MqttConnection, NotConnected, Received
from shared.requests import Requester
from shared.runtime import Runtime
from shared.signing import PublicKey
from shared.topics import fleet_replies

if TYPE_CHECKING:
    from edgefleet.site.supervisor import SiteSupervisor

log = logging.getLogger(__name__)

# libyaml's loader and dumper where PyYAML has them (10x faster: a fleet-wide deploy reads and
# writes each flow on every node); the same documents either way
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

INSTANCE = "agent"
FLOW_INSTANCES = ("aligner", "inference", "actuator")  # prefixes of a flow's own instances


class GateFailed(EdgefleetError):
    """The activated revision did not come up healthy in time."""


@functools.cache  # read once: the status carries it every time, and reading it parses files
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache  # the machine's memory does not change; reading /proc/meminfo costs ~1 ms
def _memory_mb() -> int:
    total: int = psutil.virtual_memory().total
    return round(total / 2**20)


def pinned_paths(flow: DeployedFlow, cache: BlobCache) -> dict[str, str]:
    """Library reference (`name@N`) → the path of its cached blob."""
    return {r.ref: str(cache.path(r.sha256)) for r in flow.blobs}


def localize(
    text: str, paths: dict[str, str], origin: str, shadow: PinnedResource | None = None
) -> dict[str, Any]:
    """The flow file's content with every `{ref: name@N}` of its model section (the model, its
    scripts, a shadow) turned into `{path: <cached blob>}`; a deployed `shadow` becomes the
    model's shadow (in place of one the flow text names)."""
    data = yaml.load(text, Loader=SafeLoader)
    if not isinstance(data, dict):
        raise EdgefleetError(f"{origin}: the flow text is not a mapping")

    def local(section: Any) -> Any:
        if isinstance(section, dict) and "ref" in section:
            ref = section["ref"]
            if ref not in paths:
                raise EdgefleetError(f"{origin}: {ref} is not among the flow's pinned resources")
            rest = {k: v for k, v in section.items() if k != "ref"}
            # the cached blob is named by its digest: results name the library version
            name, _, version = ref.partition("@")
            return {"path": paths[ref], "name": name, "version": version, **rest}
        return section

    model = data.get("model")
    if isinstance(model, dict):
        model = local(model)
        for key in ("preprocess", "postprocess"):
            value = model.get(key)
            if isinstance(value, dict):
                model[key] = local(value)["path"]
        if shadow is not None:
            model["shadow"] = local({"ref": shadow.ref})
        elif isinstance(model.get("shadow"), dict):
            model["shadow"] = local(model["shadow"])
        data["model"] = model
    elif shadow is not None:
        raise EdgefleetError(f"{origin}: a shadow model for a flow without a model")
    return data


class Agent:
    def __init__(self, supervisor: SiteSupervisor) -> None:
        spec = supervisor.site.spec
        assert spec.fleet is not None, "the agent runs for a site with a fleet: section"
        self.sup, self.fleet, self.site = supervisor, spec.fleet, spec.site
        self.trusted = [PublicKey.parse(k) for k in self.fleet.trusted_keys]
        self.root = supervisor.workdir
        self.state_file = StateFile(self.root / "agent" / "state.json")
        self.cache = BlobCache(self.root / "agent" / "cache", int(self.fleet.cache_max_mb * 2**20))
        self.state = AgentState()
        self.step = "idle"  # what the agent does now, for its status
        self.config = ServiceConfig(
            site=spec.site,
            instance=INSTANCE,
            prefix=spec.prefix,
            broker=BrokerConfig.model_validate(
                spec.broker.model_dump(exclude={"start_local"}, exclude_unset=True)
            ),
            timings=spec.timings,
            log_level=spec.log_level,
        )
        self.rt = Runtime(INSTANCE, self.config)
        self.rt.add_health("agent", self._health)
        self.topics = self.rt.topics
        self._latest: Any = None  # the newest desired state's wire form, not yet looked at
        self._wake = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None
        self._fleet_connection: MqttConnection | None = None
        self.requester: Requester | None = None
        self.debug = Debugger(
            self.rt,
            self.trusted,
            self.fleet.debug,
            self.config.broker.settings(f"{self.site}-agent-debug", self.config.timings),
        )

    # ------------------------------------------------------------------ lifecycle

    async def recover(self) -> None:
        """Read the state file (a revision cut short is dropped) and have the supervisor run
        the current revision's flows; called before the supervisor starts."""
        self.state = self.state_file.recover()
        # a revision cut short, or folders of an agent that pruned none yet
        prune_deployed(self.root / "deployed", self.state.kept_revisions())
        if self.state.trusted_keys is not None:  # in place: the debugger shares the list
            self.trusted[:] = [PublicKey.parse(k) for k in self.state.trusted_keys]
        if self.state.current is not None:
            try:
                flows, files = self._deployed(self.state.current)
                await self.sup.reconcile(flows, files)
            except EdgefleetError as exc:  # the site still runs its own flows
                log.error(
                    "agent: revision %d cannot run again: %s", self.state.current.revision, exc
                )

    async def start(self) -> None:
        client_id = f"{self.site}-{INSTANCE}"
        reply_topic = fleet_replies(client_id, self.config.prefix)
        if self.fleet.broker is None:  # the fleet answers on the site broker
            self.requester = Requester(self.rt.mqtt, reply_topic, client_id)
            await self.rt.subscribe(reply_topic, self.requester.on_reply)
        else:
            broker = BrokerConfig.model_validate(self.fleet.broker.model_dump())
            holder: list[Requester] = []

            async def route(message: Received) -> None:
                await holder[0].on_reply(message)

            self._fleet_connection = MqttConnection(
                broker.settings(client_id, self.config.timings), route
            )
            self.requester = Requester(self._fleet_connection, reply_topic, client_id)
            holder.append(self.requester)
            await self._fleet_connection.subscribe(reply_topic)
        await self.rt.subscribe(self.topics.desired(), self._on_desired)
        await self.debug.start()
        loops = {"agent_work": self._work, **self.debug.loops()}
        if self._fleet_connection is not None:
            loops["agent_fleet_mqtt"] = self._fleet_connection.run
        # The runtime's own skeleton (status, error reports, `stopped` at the end); `up` owns
        # the process's signals, so the runtime does not take them.
        self._serving = asyncio.create_task(
            self.rt.serve(loops, handle_signals=False), name="agent"
        )

    @property
    def alive(self) -> bool:
        """Serving, or created and not started yet (it announces itself once it connects)."""
        return self._serving is None or not self._serving.done()

    async def stop(self) -> None:
        if self._serving is None:
            return
        await self.debug.stop()
        self.rt.stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._serving), 15)
        except TimeoutError:
            log.warning("agent: did not stop within 15 s; cancelled")
            self._serving.cancel()
            await asyncio.gather(self._serving, return_exceptions=True)
        except Exception:
            log.exception("agent: failed while stopping")
        self._serving = None

    def _health(self) -> dict[str, Any]:
        disk = shutil.disk_usage(self.cache.folder)
        current = self.state.current
        return {
            "labels": dict(self.sup.site.spec.labels),
            "versions": {
                "edgefleet": _version("edgefleet"),
                "onnxruntime": _version("onnxruntime"),
            },
            "revision": current.revision if current else 0,
            "state": self.step,
            "flows": [f.name for f in self.sup.deployed],
            "cpu_count": os.cpu_count(),
            "memory_mb": _memory_mb(),
            "disk_free_mb": round(disk.free / 2**20),
            "cache_mb": round(self.cache.size() / 2**20, 1),
            "debug": self.debug.health(),
        }

    # ------------------------------------------------------------------ desired states

    async def _on_desired(self, message: Received) -> None:
        if not message.payload:  # the retained desired state was cleared
            return
        self._latest = codec.decode(message.payload, message.content_type)
        self._wake.set()

    async def _work(self) -> None:
        """One desired state at a time; one that comes meanwhile waits, and only the newest."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            wire, self._latest = self._latest, None
            try:
                accepted = accept(wire, self.site, self.trusted, self.state.revision)
            except Refused as exc:
                await self._refused(wire, exc)
                continue
            if accepted is not None:
                if accepted.desired.trusted_keys is not None:
                    self._trust(accepted.desired.trusted_keys, accepted.key_id)
                try:
                    await self.apply(accepted)
                except Exception as exc:  # a bug must not end the agent: report, go on
                    log.exception("agent: applying revision %d", accepted.desired.revision)
                    self.state = self.state_file.save(self.state.abandoned())
                    await self._report(accepted.desired, "failed", error=f"internal: {exc}")
                finally:
                    self.step = "idle"
                    self.rt.announce_soon()

    def _trust(self, keys: list[str], signer: str) -> None:
        """A key rotation: the signer, trusted now, names the keys to trust from now on (kept
        in the state file before anything else happens; `accept` parsed them)."""
        trusted = [PublicKey.parse(k) for k in keys]
        if {k.key_id for k in trusted} != {k.key_id for k in self.trusted}:
            log.warning(
                "agent: trusted keys now %s (told by key %s)",
                ", ".join(k.key_id for k in trusted),
                signer,
            )
        self.state = self.state_file.save(self.state.model_copy(update={"trusted_keys": keys}))
        self.trusted[:] = trusted  # in place: debug sessions are verified against it too

    async def _refused(self, wire: Any, exc: Refused) -> None:
        log.warning("agent: desired state refused: %s", exc)
        self.rt.reject(f"desired state refused ({exc.reason}): {exc}")
        revision = wire.get("revision") if isinstance(wire, dict) else None
        if not isinstance(revision, int) or revision < 0:
            revision = self.state.revision
        deployment = wire.get("deployment") if isinstance(wire, dict) else None
        report = ReportedState(
            site=self.site,
            revision=revision,
            deployment=deployment if isinstance(deployment, str) else None,
            state="failed",
            last_good=self.state.current.revision if self.state.current else None,
            error=f"refused ({exc.reason}): {exc}",
        )
        await self.rt.publish(self.topics.reported(), report, qos=1, retain=True)

    async def _report(
        self,
        desired: DesiredState,
        state: str,
        *,
        error: str | None = None,
        timings: dict[str, float] | None = None,
        flows: Iterable[FlowReport] = (),
    ) -> None:
        if self.state.pending is None:  # the revision ended: its folder or older ones may go
            prune_deployed(self.root / "deployed", self.state.kept_revisions())
        back = self.state.last_good if state == "applied" else self.state.current
        report = ReportedState(
            site=self.site,
            revision=desired.revision,
            deployment=desired.deployment,
            state=state,  # type: ignore[arg-type]
            flows=list(flows),
            last_good=back.revision if back is not None else None,
            error=error,
            timings_ms=timings or {},
        )
        await self.rt.publish(self.topics.reported(), report, qos=1, retain=True)

    async def _enter(self, desired: DesiredState, step: Step) -> None:
        self.step = step
        if step != "received":
            self.state = self.state_file.save(self.state.step(step))
        await self._report(desired, step)
        if step == "received":  # the status says busy; each step is on `reported` already
            self.rt.announce_soon()

    async def apply(self, accepted: Accepted) -> None:
        desired = accepted.desired
        log.info("agent: revision %d (%s) taken in", desired.revision, desired.deployment)
        timings: dict[str, float] = {}
        t0 = mark = time.monotonic()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            timings[name] = round((now - mark) * 1000, 1)
            mark = now

        target = Revision(
            revision=desired.revision, deployment=desired.deployment, desired=accepted.wire
        )
        self.state = self.state_file.save(self.state.begin(target))
        await self._enter(desired, "received")
        try:
            await self._enter(desired, "downloading")
            await self._download(desired)
            lap("download")
            await self._enter(desired, "verifying")
            flows, files = await self._verify(desired, target)
            lap("verify")
        except EdgefleetError as exc:
            self.state = self.state_file.save(self.state.abandoned())
            self.rt.reject(f"revision {desired.revision} failed at {self.step}: {exc}")
            await self._report(desired, "failed", error=f"{self.step}: {exc}", timings=timings)
            return
        await self._enter(desired, "activating")
        try:
            changes = await self.sup.reconcile(flows, files)
            log.info("agent: revision %d activated: %s", desired.revision, changes)
            lap("activate")
            await self._health_gate(flows)
            lap("health")
        except (EdgefleetError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            await self._roll_back(desired, reason, timings)
            return
        self.state = self.state_file.save(self.state.applied())
        self.cache.evict(self.state.keep())
        timings["total"] = round((time.monotonic() - t0) * 1000, 1)
        reports = [
            FlowReport(
                name=f.name,
                version=f.version,
                state="running",
                model_sha256=_model_sha(flow),
            )
            for f, flow in zip(desired.flows, flows, strict=True)
        ]
        await self._report(desired, "applied", timings=timings, flows=reports)
        log.info("agent: revision %d applied in %.0f ms", desired.revision, timings["total"])

    async def _download(self, desired: DesiredState) -> None:
        assert self.requester is not None, "start() first"
        client = FleetClient(self.requester, self.config.prefix, self.fleet.command_timeout_s)
        for flow in desired.flows:
            for resource in flow.blobs:
                if self.cache.has(resource.sha256):
                    continue
                where = await self._ask(client, "library.download_url", {"ref": resource.ref})
                await self.cache.fetch(resource.sha256, resource.size, str(where["url"]))
                log.info("agent: %s downloaded (%d bytes)", resource.ref, resource.size)

    async def _ask(self, client: FleetClient, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """A fleet command; the connection may still be coming up (the retained desired state
        can arrive before it counts as connected, or between a drop and a reconnect)."""
        deadline = time.monotonic() + self.fleet.command_timeout_s
        while True:
            try:
                await asyncio.wait_for(
                    client.requester.connection.wait_connected(), self.fleet.command_timeout_s
                )
                return await client.call(cmd, args)
            except (NotConnected, TimeoutError):
                if time.monotonic() >= deadline:
                    raise EdgefleetError(
                        f"{cmd}: the fleet's broker is not reachable within "
                        f"{self.fleet.command_timeout_s:g} s"
                    ) from None
                await asyncio.sleep(0.2)

    def _write_flows(self, revision: Revision) -> tuple[list[FlowSpec], dict[str, str]]:
        """The revision's flow files in `{workdir}/deployed/{revision}/`, references made local,
        relative data paths in `{workdir}/flows/{flow}/`."""
        desired = DesiredState.from_wire(revision.desired)
        folder = self.root / "deployed" / str(revision.revision)
        folder.mkdir(parents=True, exist_ok=True)
        flows, files = [], {}
        for flow in desired.flows:
            path = folder / f"{flow.name}.yaml"
            data = localize(flow.flow, pinned_paths(flow, self.cache), flow.ref, flow.shadow)
            write_atomic(path, yaml.dump(data, Dumper=SafeDumper, sort_keys=False).encode())
            # from the data just written: parsing the file again would only cost time
            spec = validate(FlowSpec, data, str(path))
            # A relative path left after `localize` is the flow's data (a SQLite sink's
            # `path: history.db`): one folder per flow, the same in every revision, so its
            # history goes on across deployments and rollbacks and a revision's folder holds
            # flow files only (pruned whole).
            home = self.root / "flows" / flow.name
            home.mkdir(parents=True, exist_ok=True)
            resolve_paths(spec, home.resolve())
            flows.append(spec)
            files[flows[-1].name] = str(path)
        return flows, files

    def _deployed(self, revision: Revision) -> tuple[list[FlowSpec], dict[str, str]]:
        """A revision that ran before, from its blobs in the cache (each hashed again)."""
        for sha256 in revision.blobs():
            self.cache.verify(sha256)
        return self._write_flows(revision)

    async def _verify(
        self, desired: DesiredState, target: Revision
    ) -> tuple[list[FlowSpec], dict[str, str]]:
        for sha256 in target.blobs():
            await asyncio.to_thread(self.cache.verify, sha256)
        flows, files = self._write_flows(target)
        await self._check_models(desired, flows)
        self.sup.derive(flows, files)  # every instance config valid before anything changes
        return flows, files

    async def _check_models(self, desired: DesiredState, flows: list[FlowSpec]) -> None:
        """Each model loaded and run once in a separate process, and checked against its flow."""
        for deployed, flow in zip(desired.flows, flows, strict=True):
            if flow.model is None or flow.model.path is None:
                continue
            settings = InferenceSettings.model_validate(flow.inference_settings())
            signature = await inspect_model_async(
                flow.model.path, self.fleet.inspect_timeout_s, origin=deployed.ref
            )
            # with a preprocess script this runs it once, on zeros, to measure its width
            live = settings.model_copy(update={"shadow": None})
            await asyncio.to_thread(check_fits, signature, live, origin=deployed.ref)
            if settings.shadow is not None and settings.shadow.path is not None:
                origin = f"{deployed.ref}: shadow"
                candidate = shadow_settings(settings, settings.shadow)
                signature = await inspect_model_async(
                    settings.shadow.path, self.fleet.inspect_timeout_s, origin=origin
                )
                await asyncio.to_thread(check_fits, signature, candidate, origin=origin)

    async def _health_gate(self, flows: list[FlowSpec]) -> None:
        """Every instance of the flows online and results from the pinned model, in time."""
        names = [n for n in self.sup.instances if _flow_of(n) in {f.name for f in flows}]
        expected = {f.name: _model_sha(f) for f in flows if f.model is not None}
        restarts = {n: self.sup.instances[n].restarts for n in names}
        seen: set[str] = set()
        got = asyncio.Event()

        async def on_result(message: Received) -> None:
            try:
                batch = ResultBatch.from_wire(codec.decode(message.payload, message.content_type))
            except EdgefleetError:
                return
            if expected.get(batch.flow) == batch.model.sha256:
                seen.add(batch.flow)
                if seen >= set(expected):
                    got.set()

        if not expected:
            got.set()
        watch = MqttConnection(
            self.config.broker.settings(f"{self.site}-agent-gate", self.config.timings), on_result
        )
        for name in expected:
            await watch.subscribe(self.topics.results(name), qos=0)
        task = asyncio.create_task(watch.run(), name="agent_gate_mqtt")
        timeout = self.fleet.health_timeout_s
        try:
            try:
                async with asyncio.timeout(timeout):
                    await self.sup.wait_online(timeout, names)
                    await got.wait()
            except TimeoutError:
                down = [n for n in names if not self.sup.instances[n].online]
                missing = sorted(set(expected) - seen)
                why = [f"not online: {', '.join(down)}"] if down else []
                if missing:
                    why.append(f"no results from the new model on {', '.join(missing)}")
                raise GateFailed(
                    f"health gate: {'; '.join(why) or 'timed out'} within {timeout:g} s"
                ) from None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        restarted = [n for n in names if self.sup.instances[n].restarts > restarts[n]]
        if restarted:
            raise GateFailed(f"health gate: restarted while coming up: {', '.join(restarted)}")

    async def _roll_back(
        self, desired: DesiredState, reason: str, timings: dict[str, float]
    ) -> None:
        """Back to the revision that ran before; if it cannot run again (its blobs removed or
        changed on disk), to the one before that; if neither can, the deployed flows are
        stopped (a revision that failed its gate is not left running, its actuators included)
        and the node says `rollback_failed`. The next desired state is taken in either way."""
        log.warning("agent: revision %d rolled back: %s", desired.revision, reason)
        t = time.monotonic()
        back: Revision | None = None
        failures: list[str] = []
        candidates = _distinct(self.state.current, self.state.last_good)
        for candidate in candidates:
            try:
                flows, files = self._deployed(candidate)
                await self.sup.reconcile(flows, files)
            except EdgefleetError as exc:
                failures.append(f"restoring revision {candidate.revision} failed: {exc}")
                continue
            back = candidate
            break
        if back is None:  # nothing ran before (a first revision), or nothing can run again
            await self.sup.reconcile([], {})  # site.yaml's own instances keep running
        restored = back is not None or not candidates
        reason = "; ".join([reason, *failures])
        if not restored:
            reason += "; the node runs none of the deployed flows until the next deployment"
        timings["rollback"] = round((time.monotonic() - t) * 1000, 1)
        self.state = self.state_file.save(self.state.rolled_back_to(back))
        what = "rolled back" if restored else "failed and could not be rolled back"
        self.rt.reject(f"revision {desired.revision} {what}: {reason}")
        step = "rolled_back" if restored else "rollback_failed"
        await self._report(desired, step, error=reason, timings=timings)


def _distinct(*revisions: Revision | None) -> list[Revision]:
    out: list[Revision] = []
    for r in revisions:
        if r is not None and all(r.revision != o.revision for o in out):
            out.append(r)
    return out


def _flow_of(instance: str) -> str | None:
    prefix, sep, rest = instance.partition("-")
    return rest if sep and prefix in FLOW_INSTANCES else None


def _model_sha(flow: FlowSpec) -> str | None:
    """The cached blob's name is its sha256."""
    return Path(flow.model.path).name if flow.model and flow.model.path else None
