"""actuator: turn a flow's results into writes back to machines, safely.

`edgefleet run actuator --config FILE`, one instance per flow. Reads `ef/{site}/results/{flow}`
and the inference instance's retained status; writes through the adapters (`cmd/{source}`,
request/response); reports every decision as an Event on `ef/{site}/events/{flow}`; takes hold
and release commands on `ef/{site}/cmd/{instance}`. See docs/actuator.md.

Everything that decides or writes runs in one loop (`act_loop`) fed by a queue, so rule state
needs no lock and the dispatch of status updates and commands never waits for a device.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.actuator.config import ActionSpec, ActuatorConfig, Value
from services.actuator.expr import EvalError
from services.actuator.holds import Hold, HoldStore
from services.actuator.interlocks import Interlocks
from services.actuator.rule import Rule, Transition
from services.actuator.writes import Outcome, Requester, same
from shared import clock, codec
from shared.error_channel import RateLimit
from shared.errors import PayloadError
from shared.health import HealthModel
from shared.messages import ActuatorCommand, Event, ResultBatch, Status, WriteResponse, now_ns
from shared.mqtt import Received
from shared.requests import refuse_write, serve_requests
from shared.runtime import Loop, Runtime
from shared.service import Service, ServiceSpec, run

NAME = "actuator"
log = logging.getLogger(__name__)
QUEUE_MAX = 256


@dataclass
class SafeState:
    reason: str
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class Command:
    command: ActuatorCommand
    answered: asyncio.Future[WriteResponse] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ActionHealth(HealthModel):
    active: bool
    held: bool
    hold: dict[str, Any] | None  # an operator's hold as it is persisted, if any


class ActuatorHealth(HealthModel):
    enabled: bool
    dry_run: bool
    inference: str | None  # the inference instance's state: online, stopped, offline
    deployed_sha256: str | None
    suppressed_rows: dict[str, int]
    decisions: dict[str, int]
    late_answers: int
    actions: dict[str, ActionHealth]


class ActuatorService(Service[ActuatorConfig]):
    health_section = "actuator"
    # Read at each decision, so a newer retained config changes them without a restart (a
    # restart would take the safe state); the actions and limits restart the instance.
    live_keys = Service.live_keys | {"enabled", "dry_run", "max_result_age_ms"}

    def __init__(self, rt: Runtime, config: ActuatorConfig) -> None:
        super().__init__(rt, config)
        self.actions = {str(a.name): a for a in config.actions}
        self.rules = {
            str(a.name): Rule(
                a.for_samples,
                a.reset.for_samples if a.reset else None,
                a.cooldown_s,
                a.max_writes_per_minute,
            )
            for a in config.actions
        }
        self.interlocks = Interlocks(config)
        self.counted_model: str | None = None  # sha256 of the model whose results the streaks count
        self.requester = Requester(rt, config.write_timeout_s)
        self.queue: asyncio.Queue[ResultBatch | Command | SafeState] = asyncio.Queue(QUEUE_MAX)
        self.fed = asyncio.Event()  # trusted results arrived: feeds the watchdog
        self.events_topic = rt.topics.events(config.flow)
        self.counts: Counter[str] = Counter()
        self.holds = HoldStore(config.state_dir / f"{rt.instance}.holds.json")
        # a suppression is reported again only after `repeat_event_s`, with its count
        self._repeats: RateLimit[tuple[str, str]] = RateLimit(config.repeat_event_s)

    # ------------------------------------------------------------------ wiring

    async def start(self) -> None:
        rt, cfg = self.rt, self.config
        await self.requester.start()
        self.restore_holds()  # before the first result can be decided on
        await rt.subscribe(rt.topics.status(str(cfg.inference_instance)), self.on_status)
        await rt.subscribe(rt.topics.results(cfg.flow), self.on_results)
        # Answered once act_loop carried the command out: in a task of its own, so the dispatch
        # loop stays free for the adapter's answer to the write a hold makes.
        self.commands = await serve_requests(
            rt,
            rt.topics.cmd(rt.instance),
            ActuatorCommand.from_wire,
            self.on_command,
            refuse_write,
            concurrent=True,
        )
        rt.on_stop(self.on_stop)

    def loops(self) -> dict[str, Loop]:
        return {"act_loop": self.act_loop, "watchdog_loop": self.watchdog_loop}

    async def reconfigure(self, new: ActuatorConfig, changed: set[str]) -> None:
        self.interlocks.config = new  # it reads max_result_age_ms at each result
        await super().reconfigure(new, changed)

    def health(self) -> ActuatorHealth:
        return ActuatorHealth(
            enabled=self.config.enabled,
            dry_run=self.config.dry_run,
            inference=self.interlocks.inference_state,
            deployed_sha256=self.interlocks.deployed_sha256,
            suppressed_rows=dict(self.interlocks.suppressed),
            decisions=dict(self.counts),
            late_answers=self.requester.late,
            actions={
                name: ActionHealth(active=r.active, held=r.held, hold=self._hold_json(name))
                for name, r in self.rules.items()
            },
        )

    def _hold_json(self, name: str) -> dict[str, Any] | None:
        hold = self.holds.holds.get(name)
        return None if hold is None else hold.to_json()

    def restore_holds(self) -> None:
        """Put the rules of the persisted holds back in their held state; the outputs are
        not written again (a held output is left as it is on stop and after a kill)."""
        for name, hold in self.holds.load().items():
            action, rule = self.actions.get(name), self.rules.get(name)
            if action is None or rule is None:
                log.warning("%s: hold of %r ignored: no such action", self.holds.path, name)
                continue
            rule.hold()
            if hold.value is not None:
                rule.force(same(hold.value, action.write.value))
            log.info("hold of %s by %s restored (%s)", name, hold.by, hold.reason or "no reason")

    async def on_status(self, message: Received) -> None:
        self.interlocks.on_status(
            Status.from_wire(codec.decode(message.payload, message.content_type))
        )

    async def on_results(self, message: Received) -> None:
        batch = ResultBatch.from_wire(codec.decode(message.payload, message.content_type))
        if batch.flow != self.config.flow:
            raise PayloadError(
                f"results of flow {batch.flow!r} on the topic of {self.config.flow!r}"
            )
        if self.queue.full():  # the oldest batch would be stale by the time it is read anyway
            self._drop(self.queue.get_nowait(), "dropped: the actuator is behind")
            self.counts["dropped_batches"] += 1
        self.queue.put_nowait(batch)

    async def on_command(self, command: ActuatorCommand, message: Received) -> WriteResponse:
        item = Command(command)
        await self.queue.put(item)
        return await item.answered

    async def on_stop(self) -> None:
        """The actuator is stopping: take the safe state while the adapters can still be asked."""
        state = SafeState("the actuator is stopping")
        while not self.queue.empty():  # the safe state goes first; results would be stale
            self._drop(self.queue.get_nowait(), "not carried out: the actuator is stopping")
        self.queue.put_nowait(state)
        try:
            await asyncio.wait_for(asyncio.shield(state.done), self.config.stop_timeout_s)
        except TimeoutError:
            log.warning(
                "safe state on stop not confirmed within %.1f s", self.config.stop_timeout_s
            )

    @staticmethod
    def _drop(item: ResultBatch | Command | SafeState, why: str) -> None:
        """An item leaves the queue unhandled: a command still gets its answer."""
        if isinstance(item, Command) and not item.answered.done():
            item.answered.set_result(
                WriteResponse(request_id=item.command.request_id, ok=False, error=why)
            )

    # ------------------------------------------------------------------ loops

    async def act_loop(self) -> None:
        while True:
            item = await self.queue.get()
            if isinstance(item, ResultBatch):
                await self.on_batch(item)
            elif isinstance(item, Command):
                await self.on_hold_or_release(item)
            else:
                try:
                    await self.safe_state(item.reason)
                finally:
                    if not item.done.done():
                        item.done.set_result(None)

    async def watchdog_loop(self) -> None:
        """No trusted result for `watchdog_s`: take the safe state, once per silence."""
        limit = self.config.watchdog_s
        while True:
            try:  # not wait_for: it loses a stop's cancel that lands as a result comes
                async with asyncio.timeout(limit):
                    await self.fed.wait()
            except TimeoutError:
                await self.queue.put(SafeState(f"no trusted result for {limit:g} s (watchdog)"))
                await self.fed.wait()
            self.fed.clear()

    # ------------------------------------------------------------------ results

    async def on_batch(self, batch: ResultBatch) -> None:
        trusted, blocked = self.interlocks.check(batch, now_ns())
        for key, (count, reason, rid) in blocked.items():
            await self.event("*", "suppressed", f"{reason} ({count} row(s))", rid, repeat_key=key)
        if not blocked:  # interlocks clear: the next suppression is reported at once
            self._repeats.forget(lambda key: key[0] == "*")
        rows = np.flatnonzero(trusted)
        if rows.size == 0:
            return
        self.fed.set()
        if batch.model.sha256 != self.counted_model:
            # a model swap mid-debounce: two results of the old model and one of the new
            # must not make a streak of three
            if self.counted_model is not None:
                for rule in self.rules.values():
                    rule.new_model()
            self.counted_model = batch.model.sha256
        columns = self.columns(batch)
        n = len(batch)
        for name, action in self.actions.items():
            try:
                when = action.condition(columns, n)
                reset = action.reset.condition(columns, n) if action.reset else when
            except EvalError as exc:
                await self.event(
                    name, "failed", f"cannot evaluate: {exc}", batch.ids[rows[0]], repeat_key="eval"
                )
                continue
            rule = self.rules[name]
            for i in rows.tolist():
                kind = rule.observe(bool(when[i]), bool(reset[i]))
                if kind is not None:
                    await self.decide(action, rule, kind, batch, i, columns)

    @staticmethod
    def columns(batch: ResultBatch) -> dict[str, Any]:
        return {
            **batch.outputs,
            "t": batch.t,
            "latency_us": batch.latency_us,
            "model.name": batch.model.name,
            "model.version": batch.model.version,
            "model.sha256": batch.model.sha256,
        }

    async def decide(
        self,
        action: ActionSpec,
        rule: Rule,
        kind: Transition,
        batch: ResultBatch,
        i: int,
        columns: dict[str, Any],
    ) -> None:
        name, rid = str(action.name), batch.ids[i]
        value: Value
        if kind == "set":
            cond, samples = action.when, action.for_samples
            if action.write.value_from is not None:
                raw = np.asarray(columns.get(action.write.value_from, np.nan))
                value = float(raw[i] if raw.ndim else raw)
            else:
                assert action.write.value is not None
                value = action.write.value
        else:
            assert action.reset is not None
            cond, samples, value = action.reset.when, action.reset.for_samples, action.reset.value
        why = f"{kind}: {cond} for {samples} sample(s)"
        write = {"source": action.write.source, **action.write.target, "value": value}
        if (bad := action.bounds.violation(value)) is not None:
            await self.event(name, "suppressed", f"{why}; {bad}", rid, write, repeat_key="bounds")
            return
        if (gate := rule.gate(clock.monotonic())) is not None:
            await self.event(
                name, "suppressed", f"{why}; {gate}", rid, write, repeat_key=gate.split(":")[0]
            )
            return
        if not self.interlocks.still_fresh(int(batch.t[i]), now_ns()):
            await self.event(
                name, "suppressed", f"{why}; the result went stale waiting", rid, write
            )
            return
        rule.attempted(clock.monotonic())
        if not self.config.enabled or self.config.dry_run:
            rule.done(kind)
            await self.simulated(name, why, rid, write)
            return
        outcome = await self.requester.write(action.write.source, action.write.write_target, value)
        if outcome.ok:
            rule.done(kind)
        await self.report(name, why, rid, write, outcome)

    async def simulated(self, name: str, why: str, rid: str | None, write: dict[str, Any]) -> None:
        if not self.config.enabled:
            await self.event(
                name,
                "suppressed",
                f"{why}; actions are disabled for this site (enabled: false), not written",
                rid,
                write,
            )
        else:
            await self.event(name, "dry_run", f"{why}; dry run, not written", rid, write)

    async def report(
        self,
        name: str,
        why: str,
        rid: str | None,
        write: dict[str, Any],
        outcome: Outcome,
        decision: str = "acted",
    ) -> None:
        write = {
            **write,
            "request_id": outcome.request_id,
            "readback": outcome.readback,
            "ms": round(outcome.elapsed_ms, 2),
        }
        if outcome.ok:
            await self.event(name, decision, f"{why}; written and read back", rid, write)
        else:
            await self.event(name, "failed", f"{why}; {outcome.error}", rid, write)

    # ------------------------------------------------------------------ safe state, hold

    async def safe_state(self, reason: str) -> None:
        for name, action in self.actions.items():
            rule, value = self.rules[name], action.safe
            if rule.held:
                await self.event(name, "safe_state", f"{reason}; held by an operator: left as held")
                continue
            if value is None:
                await self.event(name, "safe_state", f"{reason}; safe state is to keep the output")
                continue
            write = {"source": action.write.source, **action.write.target, "value": value}
            why = f"{reason}; safe value"
            rule.force(same(value, action.write.value))
            if not self.config.enabled or self.config.dry_run:
                await self.simulated(name, why, None, write)
                continue
            outcome = await self.requester.write(
                action.write.source, action.write.write_target, value
            )
            await self.report(name, why, None, write, outcome, decision="safe_state")

    async def on_hold_or_release(self, item: Command) -> None:
        cmd, name = item.command, item.command.action
        action, rule = self.actions.get(name), self.rules.get(name)
        if action is None or rule is None:
            await self.answer(
                item, False, error=f"no action {name!r}; actions: {', '.join(self.actions)}"
            )
            return
        who = f"by {cmd.by or 'unknown'}" + (f" ({cmd.reason})" if cmd.reason else "")
        if cmd.op == "release":
            await asyncio.to_thread(self.holds.set, name, None)
            rule.release()
            await self.event(name, "release", f"manual override released {who}: the rule acts")
            await self.answer(item, True)
            return
        if cmd.value is not None and (bad := action.bounds.violation(cmd.value)) is not None:
            await self.event(name, "suppressed", f"hold refused: {bad}")
            await self.answer(item, False, error=bad)
            return
        # persisted before it takes effect: once answered, a restart cannot release it
        hold = Hold(cmd.value, cmd.by or "unknown", now_ns(), cmd.reason)
        await asyncio.to_thread(self.holds.set, name, hold)
        rule.hold()
        if cmd.value is None:
            why = f"manual override {who}: rule suspended, output left as it is"
            await self.event(name, "hold", why)
            await self.answer(item, True)
            return
        rule.force(same(cmd.value, action.write.value))
        write = {"source": action.write.source, **action.write.target, "value": cmd.value}
        why = f"manual override {who}: output held at {cmd.value!r}, rule suspended"
        if not self.config.enabled or self.config.dry_run:
            mode = "dry run" if self.config.enabled else "actions are disabled for this site"
            await self.event(name, "hold", f"{why}; {mode}: not written", None, write)
            await self.answer(item, True, error=f"rule suspended; not written ({mode})")
            return
        outcome = await self.requester.write(
            action.write.source, action.write.write_target, cmd.value
        )
        await self.report(name, why, None, write, outcome, decision="hold")
        await self.answer(item, outcome.ok, outcome.readback, outcome.error)

    async def answer(
        self, item: Command, ok: bool, readback: Any = None, error: str | None = None
    ) -> None:
        if not item.answered.done():
            item.answered.set_result(
                WriteResponse(
                    request_id=item.command.request_id, ok=ok, readback=readback, error=error
                )
            )

    # ------------------------------------------------------------------ the audit trail

    async def event(
        self,
        action: str,
        decision: str,
        reason: str,
        result_id: str | None = None,
        write: dict[str, Any] | None = None,
        *,
        repeat_key: str | None = None,
    ) -> None:
        """Publish one decision. A suppression with `repeat_key` is reported again only after
        `repeat_event_s`, with the count of those not reported in between."""
        if repeat_key is not None:
            times = self._repeats.hit((action, repeat_key))
            if not times:
                return
            if times > 1:
                reason = f"{reason} [{times} times since last reported]"
        else:
            self._repeats.forget(lambda key: key[0] == action)
        self.counts[decision] += 1
        body = Event(
            flow=self.config.flow,
            action=action,
            decision=decision,  # type: ignore[arg-type]
            reason=reason,
            result_id=result_id,
            write=write,
        )
        log.info("%s %s %s: %s", self.config.flow, action, decision, reason)
        await self.rt.publish(self.events_topic, body, qos=1)


async def main(config: ActuatorConfig) -> None:
    await run(NAME, config, lambda rt: ActuatorService(rt, config))


SPEC = ServiceSpec(NAME, ActuatorConfig, main, service=ActuatorService)
