"""The actuator against a real broker, the real Modbus adapter and the simulator's coils."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet import actuator_cli
from services.actuator.config import ActuatorConfig
from shared.config import load_config
from shared.errors import ConfigError
from shared.topics import Topics
from tests.actuator.helpers import OTHER_SHA, actuator_config, lamp_action, plant
from tests.helpers import Probe


async def test_debounce_and_hysteresis_light_then_reset_the_alarm_lamp(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    action = lamp_action(
        for_samples=3, reset={"when": "score < 0.6", "value": False, "for_samples": 2}
    )
    async with plant(base_config, site, probe, actions=[action]) as p:
        await p.send(0.9, 0.9, 0.5, 0.9, 0.9)  # never 3 in a row
        await p.settled()
        assert not p.lamp and not p.events()
        batch = await p.send(0.95)  # the third consecutive one
        [acted] = await p.event("acted")
        assert p.lamp
        assert acted["result_id"] == batch.ids[0]
        assert acted["write"]["readback"] == 1.0 and acted["write"]["source"] == "plc1"
        assert "score > 0.8 for 3 sample(s)" in acted["reason"]
        await p.send(0.7, 0.7, 0.5, 0.7, 0.95)  # between the thresholds, one low: hold on
        await p.settled()
        assert p.lamp and len(p.events()) == 1
        await p.send(0.5, 0.4)
        await p.event("acted", text="reset: score < 0.6")
        assert not p.lamp


async def test_cooldown_and_rate_limit_suppress_with_the_reason(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    cool = lamp_action(cooldown_s=60)
    rate = lamp_action(
        name="stop",
        write={"source": "plc1", "table": "coil", "address": 1, "value": True},
        max_writes_per_minute=2,
    )
    async with plant(base_config, site, probe, actions=[cool, rate]) as p:
        for score in (0.9, 0.5, 0.9):
            await p.send(score)
            await p.settled()
        [c] = await p.event("suppressed", "lamp", "cooldown")
        assert c["write"]["value"] is False  # the reset was the suppressed one
        [r] = await p.event("suppressed", "stop", "rate limit: 2 writes in the last minute")
        assert r["write"]["value"] is True
        assert [e["action"] for e in p.events("acted")].count("stop") == 2
        assert [e["action"] for e in p.events("acted")].count("lamp") == 1
        assert p.lamp  # the reset never went out


async def test_values_outside_bounds_are_never_written(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    setpoint = {
        "name": "speed",
        "when": "setpoint > 0",
        "write": {"source": "plc1", "table": "holding", "address": 0, "value_from": "setpoint"},
        "bounds": {"min": 1000, "max": 3000},
        "cooldown_s": 0,
    }
    async with plant(base_config, site, probe, actions=[setpoint]) as p:
        await p.send(setpoint=[5000.0])
        await p.event("suppressed", "speed", "above the maximum 3000")
        assert p.sim.state.commands.speed_setpoint_rpm != 5000
        await p.send(setpoint=[2500.0])  # still due: the next row in bounds is written
        await p.event("acted", "speed")
        assert p.sim.state.commands.speed_setpoint_rpm == 2500
    out_of_bounds = lamp_action(
        write={"source": "plc1", "table": "holding", "address": 0, "value": 5},
        reset=None,
        bounds={"max": 3},
    )
    with pytest.raises(ConfigError, match=r"actions\.0: write\.value: value 5 above the maximum 3"):
        actuator_config(base_config, actions=[out_of_bounds])


async def test_dry_run_reports_and_never_writes(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    async with plant(base_config, site, probe, dry_run=True) as p:
        await p.send(0.9)
        [e] = await p.event("dry_run")
        assert "dry run, not written" in e["reason"] and e["write"]["value"] is True
        await p.send(0.5)
        await p.event("dry_run", text="reset")
        assert not p.lamp


async def test_actions_are_disabled_by_default(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    async with plant(base_config, site, probe, enabled=None) as p:  # the key left out
        await p.send(0.9)
        await p.event("suppressed", text="actions are disabled for this site")
        await p.settled()
        assert not p.lamp and not p.events("acted")


async def test_stale_wrong_model_offline_and_replayed_results_never_write(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    async with plant(base_config, site, probe, max_result_age_ms=500) as p:
        old = p.results.batch(score=[0.9])
        old.t[:] -= 5_000_000_000
        old.ids = [f"pump:{old.t[0]}"]
        await p.publish(old)
        await p.event("suppressed", "*", "ms old, limit 500 ms")
        await p.send(0.9, sha=OTHER_SHA)
        await p.event("suppressed", "*", "deployed is abababababab")
        await p.status("offline")
        await p.send(0.9)
        await p.event("suppressed", "*", "inference-pump is offline")
        await p.settled()
        assert not p.lamp and not p.events("acted")
        await p.status("online")
        await p.settled()
        high = await p.send(0.9)
        await p.event("acted")
        await p.send(0.5)
        await p.event("acted", text="reset")
        await p.publish(high)  # replayed: same id, must not light the lamp again
        await p.event("suppressed", "*", "duplicate or replayed")
        await p.settled()
        assert not p.lamp and len(p.events("acted")) == 2


async def test_results_that_stop_bring_the_safe_state(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    async with plant(
        base_config,
        site,
        probe,
        watchdog_s=0.6,
        actions=[lamp_action(reset=None, safe_value=False)],
    ) as p:
        await p.send(0.9)
        await p.event("acted")
        assert p.lamp
        [e] = await p.event("safe_state", text="no trusted result for 0.6 s")
        assert e["write"]["readback"] == 0.0
        assert not p.lamp


async def test_hold_and_release_from_the_command_line(
    base_config: dict[str, Any], site: str, probe: Probe, broker: Any
) -> None:
    async with plant(base_config, site, probe) as p:
        argv = [
            "--site",
            site,
            "--instance",
            "actuator-pump",
            "--action",
            "lamp",
            "--port",
            str(broker.port),
            "--timeout",
            "5",
        ]
        code = await asyncio.to_thread(actuator_cli.main, ["hold", *argv, "--value", "true"])
        assert code == 0
        await p.event("hold", text="held at True")
        assert p.lamp
        await p.send(0.1, 0.1)  # the rule is suspended: no reset
        await p.settled()
        assert p.lamp and not p.events("acted")
        assert await asyncio.to_thread(actuator_cli.main, ["release", *argv]) == 0
        await p.event("release")
        await p.send(0.1)
        await p.event("acted", text="reset")
        assert not p.lamp
        wrong = [
            "--site",
            site,
            "--instance",
            "actuator-pump",
            "--action",
            "nope",
            "--port",
            str(broker.port),
        ]
        assert await asyncio.to_thread(actuator_cli.main, ["hold", *wrong]) == 1


async def test_a_device_that_refuses_the_write_is_reported(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    async with plant(base_config, site, probe) as p:
        assert p.sim.modbus is not None
        p.sim.modbus.fail_with(4)
        await p.send(0.9)
        [e] = await p.event("failed")
        assert "plc1 refused" in e["reason"] and "0x04" in e["reason"]
        p.sim.modbus.fail_with(None)
        await p.send(0.9)  # still due: tried again on the next sample
        await p.event("acted")
        assert p.lamp


def test_a_bad_expression_is_a_config_error_that_names_it(tmp_path: Path) -> None:
    path = tmp_path / "actuator.yaml"
    path.write_text(
        "site: s1\ninstance: a1\nflow: pump\nactions:\n"
        "  - when: score > 0.8\n    write: {source: plc1, table: coil, address: 0, value: true}\n"
        "  - when: score >> 0.8\n    write: {source: plc1, table: coil, address: 1, value: true}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, ActuatorConfig)
    text = str(err.value)
    assert f"{path}:7: actions.1.when" in text and "'score >> 0.8' at column 8" in text


async def test_stopping_the_actuator_takes_the_safe_state(
    base_config: dict[str, Any], site: str, probe: Probe, tmp_path: Path
) -> None:
    config = actuator_config(base_config, actions=[lamp_action(reset=None, safe_value=False)])
    path = tmp_path / "actuator.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json", exclude_none=True)))
    async with plant(base_config, site, probe, actuator=False) as p:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgefleet.cli",
            "run",
            "actuator",
            "--config",
            str(path),
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await p.probe.wait_for(
                p.topics.status("actuator-pump"), lambda s: s["state"] == "online", timeout=20
            )
            await p.send(0.9)
            await p.event("acted")
            assert p.lamp
            proc.send_signal(signal.SIGTERM)
            [e] = await p.event("safe_state", text="the actuator is stopping")
            assert e["write"]["readback"] == 0.0 and not p.lamp
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            await p.probe.wait_for(
                p.topics.status("actuator-pump"), lambda s: s["state"] == "stopped"
            )
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_hold_survives_a_kill_of_the_actuator(
    base_config: dict[str, Any], site: str, probe: Probe, broker: Any, tmp_path: Path
) -> None:
    config = actuator_config(base_config, state_dir=str(tmp_path / "state"))
    path = tmp_path / "actuator.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True)))
    status = Topics(site).status("actuator-pump")
    argv = ["--site", site, "--instance", "actuator-pump", "--action", "lamp"]
    argv += ["--port", str(broker.port), "--timeout", "5"]

    def start() -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "edgefleet.cli", "run", "actuator", "--config", str(path)]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async with plant(base_config, site, probe, actuator=False) as p:
        process = start()
        try:
            await probe.wait_for(status, lambda s: s["state"] == "online", timeout=20)
            hold = ["hold", *argv, "--value", "false", "--by", "alice", "--reason", "valve work"]
            assert await asyncio.to_thread(actuator_cli.main, hold) == 0
            await p.event("hold", text="by alice (valve work)")
            process.send_signal(signal.SIGKILL)  # no stop hook, no safe state: a crash
            process.wait(10)
            probe.messages.clear()
            process = start()

            def restored(s: dict[str, Any]) -> bool:
                lamp = s["health"]["actuator"]["actions"]["lamp"] if s["state"] == "online" else {}
                return bool(lamp.get("held"))

            [online] = await probe.wait_for(status, restored, timeout=20)
            held = online["health"]["actuator"]["actions"]["lamp"]["hold"]
            assert held["by"] == "alice" and held["reason"] == "valve work"
            assert held["value"] is False and held["time"].startswith("20")
            for _ in range(3):  # a rule not held would light the lamp at the first of these
                await p.send(0.95)
            # one queue feeds the decisions: once the release is reported, the results were seen
            assert await asyncio.to_thread(actuator_cli.main, ["release", *argv]) == 0
            await p.event("release", text="by ")
            assert not p.lamp and not p.events("acted")
            await p.send(0.95)
            await p.event("acted")
            await p.wait_lamp(True)
        finally:
            process.terminate()
            process.wait(10)


async def test_a_model_swap_mid_debounce_starts_the_streak_again(
    base_config: dict[str, Any], site: str, probe: Probe
) -> None:
    # two highs of the old model and one of the new made a streak of three and lit the lamp
    async with plant(base_config, site, probe, actions=[lamp_action(for_samples=3)]) as p:
        await p.send(0.9, 0.9)
        await p.status(sha=OTHER_SHA)
        await p.settled()
        await p.send(0.9, sha=OTHER_SHA)
        await p.settled()
        assert not p.lamp and not p.events("acted")
        await p.send(0.9, 0.9, sha=OTHER_SHA)
        await p.event("acted")
        assert p.lamp
