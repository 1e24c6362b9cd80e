"""The forwarder's Sparkplug sink on a real mosquitto, read back with the independent decoder:
births with metric definitions and aliases, DDATA on change, seq and bdSeq across a killed
connection and a killed process, a rebirth on NCMD."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.forwarder.config import ForwarderConfig
from services.forwarder.service import main
from shared.config import validate
from shared.topics import Topics
from tests.forwarder.conftest import event, results
from tests.helpers import Probe, running
from tests.sparkplug.conftest import Schema

GROUP = "plant"
ALL = f"spBv1.0/{GROUP}/#"


def sink_config(base: dict[str, Any], tmp_path: Path, port: int) -> dict[str, Any]:
    sink = {
        "kind": "sparkplug",
        "name": "scada",
        "broker": {"port": port},
        "group_id": GROUP,
        "edge_node_id": "edge1",
        "retry_initial_s": 0.05,
        "retry_max_s": 0.3,
    }
    return {**base, "instance": "fwd", "queue_dir": str(tmp_path / "queues"), "sinks": [sink]}


def topic(kind: str, device: str | None = None) -> str:
    base = f"spBv1.0/{GROUP}/{kind}/edge1"
    return base if device is None else f"{base}/{device}"


class Seen:
    """The Sparkplug messages the probe got, decoded, in arrival order."""

    def __init__(self, probe: Probe, spb: Schema) -> None:
        self.probe, self.spb = probe, spb

    def all(self) -> list[tuple[str, Any]]:
        """What the edge node sent (the commands are the test's own)."""
        return [
            (m.topic, self.spb.decode(m.payload))
            for m in self.probe.received(ALL)
            if "CMD/" not in m.topic
        ]

    def of(self, kind: str, device: str | None = None) -> list[Any]:
        return [p for t, p in self.all() if t == topic(kind, device)]

    async def wait(self, kind: str, device: str | None = None, count: int = 1) -> list[Any]:
        await self.probe.wait_until(lambda: len(self.of(kind, device)) >= count, timeout=20)
        return self.of(kind, device)


def bdseq(payload: Any) -> int:
    (value,) = [m.long_value for m in payload.metrics if m.name == "bdSeq"]
    return int(value)


def seqs_are_continuous(seen: list[tuple[str, Any]]) -> None:
    """Within each session (from its NBIRTH, seq 0) every message's seq is the next, mod 256."""
    expected = None
    for t, payload in seen:
        if "/NDEATH/" in t:
            continue
        if "/NBIRTH/" in t:
            assert payload.seq == 0
        elif expected is not None:
            assert payload.seq == expected, f"{t}: seq {payload.seq}, expected {expected}"
        expected = (payload.seq + 1) % 256


@pytest.fixture
def seen(probe: Probe, spb: Schema) -> Seen:
    return Seen(probe, spb)


async def test_births_then_ddata_on_change_then_rebirth_on_command(
    base_config: dict[str, Any], tmp_path: Path, site: str, probe: Probe, seen: Seen, spb: Schema
) -> None:
    config = validate(
        ForwarderConfig, sink_config(base_config, tmp_path, probe.connection.settings.port), "t"
    )
    topics = Topics(site)
    await probe.subscribe(ALL, qos=0)
    await probe.subscribe(topics.errors("fwd"))
    await probe.subscribe(topics.status("fwd"))
    async with running(main(config)):
        (nbirth,) = await seen.wait("NBIRTH")
        node = {m.name: m for m in nbirth.metrics}
        assert nbirth.seq == 0 and bdseq(nbirth) == 0
        assert node["bdSeq"].datatype == spb.types["Int64"]
        rebirth = node["Node Control/Rebirth"]
        assert rebirth.datatype == spb.types["Boolean"] and rebirth.boolean_value is False
        assert node["Properties/Site"].string_value == site

        await probe.publish(topics.results("pump"), results("pump", 0, 3), qos=1)
        (dbirth,) = await seen.wait("DBIRTH", "pump")
        metrics = {m.name: m for m in dbirth.metrics}
        assert {"Outputs/score", "Model/Name", "Model/Version", "Model/SHA256"} <= set(metrics)
        assert metrics["Outputs/score"].datatype == spb.types["Float"]
        assert metrics["Model/Version"].string_value == "3"
        assert metrics["Model/Version"].datatype == spb.types["String"]
        aliases = [m.alias for m in [*nbirth.metrics, *dbirth.metrics] if m.HasField("alias")]
        assert len(aliases) == len(set(aliases))  # unique across the node and its devices
        ddata = await seen.wait("DDATA", "pump")  # rows 1 and 2 after the birth of row 0
        score = metrics["Outputs/score"].alias
        values = [(m.alias, round(m.float_value, 4)) for p in ddata for m in p.metrics]
        assert values == [(score, 0.01), (score, 0.02)]  # only what changed, by alias
        assert all(not m.name for p in ddata for m in p.metrics)

        # the same value again: no DDATA; a new one: one DDATA with just that metric
        await probe.publish(topics.results("pump"), results("pump", 2, 1), qos=1)
        await probe.publish(topics.results("pump"), results("pump", 7, 1), qos=1)
        ddata = await seen.wait("DDATA", "pump", count=2)
        assert [round(m.float_value, 4) for m in ddata[1].metrics] == [0.07]
        assert ddata[1].metrics[0].timestamp == 1_700_000_000_000 + 7

        # a decision: new metrics, so the device is born again with them
        await probe.publish(topics.events("pump"), event("pump", 1), qos=1)
        births = await seen.wait("DBIRTH", "pump", count=2)
        decision = {m.name: m for m in births[1].metrics}["Actions/stop-pump/Decision"]
        assert decision.string_value == "acted"

        # NCMD rebirth, by name: NBIRTH (seq 0, same bdSeq) and every DBIRTH again
        command = spb.Payload(timestamp=1)
        command.metrics.add(
            name="Node Control/Rebirth", datatype=spb.types["Boolean"], boolean_value=True
        )
        await probe.publish_raw(topic("NCMD"), command.SerializeToString())
        reborn = await seen.wait("NBIRTH", count=2)
        assert reborn[1].seq == 0 and bdseq(reborn[1]) == 0
        births = await seen.wait("DBIRTH", "pump", count=3)
        assert {m.name for m in births[2].metrics} == set(
            decision_names := {m.name for m in births[1].metrics}
        )
        assert decision_names
        # by alias, as a host that learned the aliases sends it
        command = spb.Payload(timestamp=2)
        command.metrics.add(alias=rebirth.alias, datatype=spb.types["Boolean"], boolean_value=True)
        await probe.publish_raw(topic("NCMD"), command.SerializeToString())
        await seen.wait("NBIRTH", count=3)

        await probe.publish_raw(topic("NCMD"), b"\xff\xfenot protobuf")
        reports = await probe.wait_for(topics.errors("fwd"), lambda r: "NCMD" in r["reason"])
        assert reports[0]["topic"] == topic("NCMD")

        def counted(status: dict[str, Any]) -> bool:
            sink = status.get("health", {}).get("sink_scada", {})
            return bool(sink.get("rebirths") == 2 and sink.get("commands") == 3)

        (status,) = await probe.wait_for(topics.status("fwd"), counted)
        sink = status["health"]["sink_scada"]
        assert sink["connected"] and sink["bdseq"] == 0 and sink["devices"] == 1
        assert sink["births"] == 3 + 2 * 2 and sink["ddata"] == 2  # 1 + 2 DBIRTH, then 2 rebirths
    seqs_are_continuous(seen.all())


def deaths_match_births(seen: list[tuple[str, Any]]) -> None:
    """Each NDEATH carries the bdSeq of the session's NBIRTH; sessions take growing bdSeqs."""
    births = [bdseq(p) for t, p in seen if "/NBIRTH/" in t]
    last = None
    for t, payload in seen:
        if "/NBIRTH/" in t:
            last = bdseq(payload)
        elif "/NDEATH/" in t and last is not None:
            assert bdseq(payload) == last, f"NDEATH bdSeq {bdseq(payload)}, NBIRTH had {last}"
            last = None
    assert births == sorted(births)


async def test_a_killed_connection_ends_in_ndeath_and_a_new_session_restates_everything(
    base_config: dict[str, Any], tmp_path: Path, site: str, probe: Probe, seen: Seen
) -> None:
    port = probe.connection.settings.port
    config = validate(ForwarderConfig, sink_config(base_config, tmp_path, port), "t")
    topics = Topics(site)
    await probe.subscribe(ALL, qos=0)
    async with running(main(config)):
        await seen.wait("NBIRTH")
        await probe.publish(topics.results("pump"), results("pump", 0, 3), qos=1)
        await seen.wait("DDATA", "pump")
        # a client with the sink's id takes its session over: the broker drops the sink's
        # connection with no DISCONNECT of its own, as a network loss would, and sends the will
        async with Probe("127.0.0.1", port, client_id=f"{site}-fwd-scada"):
            pass
        (death,) = await seen.wait("NDEATH")
        births = await seen.wait("NBIRTH", count=2)
        assert bdseq(death) == bdseq(births[0]) == 0
        assert bdseq(births[-1]) >= 1
        dbirths = await seen.wait("DBIRTH", "pump", count=2)  # the device restated
        score = {m.name: m for m in dbirths[-1].metrics}["Outputs/score"]
        assert round(score.float_value, 4) == 0.02  # with its last value
        await probe.publish(topics.results("pump"), results("pump", 20, 2), qos=1)
        await probe.wait_until(
            lambda: any(
                round(m.float_value, 4) == 0.21 for p in seen.of("DDATA", "pump") for m in p.metrics
            )
        )
    all_seen = seen.all()
    seqs_are_continuous(all_seen)
    deaths_match_births(all_seen)
    assert "/NDEATH/" in all_seen[-1][0]  # a clean stop sends the NDEATH too (will on close)


@pytest.fixture
def process_env() -> Iterator[dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    yield env


async def test_bdseq_grows_across_a_killed_and_restarted_process(
    base_config: dict[str, Any],
    tmp_path: Path,
    probe: Probe,
    seen: Seen,
    process_env: dict[str, str],
) -> None:
    config_file = tmp_path / "forwarder.json"
    config_file.write_text(
        json.dumps(sink_config(base_config, tmp_path, probe.connection.settings.port))
    )
    command = [
        sys.executable,
        "-m",
        "edgefleet.cli",
        "run",
        "forwarder",
        "--config",
        str(config_file),
    ]
    await probe.subscribe(ALL, qos=0)
    for run in range(2):
        proc = await asyncio.create_subprocess_exec(
            *command, env=process_env, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            births = await seen.wait("NBIRTH", count=run + 1)
            assert bdseq(births[-1]) == run  # bdSeq 0, then 1 from the state file
            proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sends the will
            deaths = await seen.wait("NDEATH", count=run + 1)
            assert bdseq(deaths[-1]) == run
        finally:
            if proc.returncode is None:
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    deaths_match_births(seen.all())
