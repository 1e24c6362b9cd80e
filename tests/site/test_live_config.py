"""A newer retained `config/{instance}` reaches every service of a site run by the supervisor:
the keys a service applies live change in place (same process, the status names the revision),
any other key makes the instance exit cleanly (exit code 75) and the supervisor restarts it at
once with that revision in its config file. Real mosquitto, real processes, the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgefleet.broker import LocalBroker, free_port
from edgefleet.site.supervisor import SiteSupervisor, StatusChange
from shared.messages import ConfigUpdate
from shared.service import RESTART_EXIT_CODE
from shared.topics import Kind, Topics
from tests.helpers import Probe
from tests.inference.models import mlp
from tests.site.helpers import FEATURES, flow_data, site_data, write_site

ACTION = {
    "when": "score > 1e9",  # never: the actuator's rule is not what is tested here
    "write": {"source": "plc1", "table": "coil", "address": 0, "value": True},
}
# Per instance: a key it changes live, or one that needs a restart, and the new value.
LIVE: dict[str, dict[str, object]] = {
    "aligner-pump": {"use_complete": False, "max_ahead_ms": 5000.0},
    "actuator-pump": {"dry_run": False},
    "inference-pump": {"publish_qos": 0},
    "modbus-plc1": {"log_level": "DEBUG"},  # every service changes its log level live
}
RESTART: dict[str, dict[str, object]] = {
    "modbus-plc1": {"poll_ms": 200},
    "opcua-opc1": {"publishing_ms": 300},
    "ingest-gw": {"coalesce_ms": 20.0},
    "forwarder": {"dedupe_window": 500},
    "aligner-pump": {"subscribe_qos": 0},
}


def site_with_every_service(tmp_path: Path, site: str, port: int, modbus_port: int) -> Path:
    data = site_data(site, port, modbus_port)
    data["sources"] += [
        {  # no server there: the adapter is online on MQTT and retries its session
            "name": "opc1",
            "kind": "opcua",
            "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/none",
            "signals": [{"name": "t", "node": "ns=2;s=T"}],
        },
        {
            "name": "gw",
            "kind": "mqtt",
            "inputs": [{"topic": f"{site}-plant/#", "signals": [{"name": "t", "path": "t"}]}],
        },
    ]
    data["actuator"] = {"enabled": True, "dry_run": True}
    data["forwarder"] = {"queue_dir": "state/q"}
    (tmp_path / "flows").mkdir()
    mlp(tmp_path / "flows" / "pump.onnx", f=len(FEATURES))
    flow = flow_data(actions=[ACTION], sinks=[{"kind": "sqlite", "path": "h.db"}])
    return write_site(tmp_path, data, flow)


async def publish(probe: Probe, topics: Topics, name: str, revision: int, keys: Any) -> None:
    update = ConfigUpdate(instance=name, revision=revision, config=keys)
    await probe.publish(topics.config(name), update.to_wire(), qos=1, retain=True)


async def online_at(probe: Probe, topics: Topics, name: str, revision: int) -> dict[str, Any]:
    found = await probe.wait_for(
        topics.status(name),
        lambda s: s["state"] == "online" and s["health"].get("revision") == revision,
        timeout=60,
    )
    health: dict[str, Any] = found[0]["health"]
    return health


async def test_every_service_takes_a_newer_config_live_or_by_a_clean_restart(
    tmp_path: Path, broker: LocalBroker, probe: Probe, site: str, simulator: int
) -> None:
    path = site_with_every_service(tmp_path, site, broker.port, simulator)
    topics = Topics(site)
    await probe.subscribe(topics.all_of(Kind.STATUS))
    lines: list[StatusChange] = []
    async with SiteSupervisor(path, tmp_path / "w", on_status=lines.append) as sup:
        names = sorted(sup.instances)
        assert set(names) == set(LIVE) | set(RESTART)
        await sup.wait_online(timeout=90)
        pids = {n: (await online_at(probe, topics, n, 0))["pid"] for n in names}

        # live: revision 1, the same process, the key changed
        for name, keys in LIVE.items():
            await publish(probe, topics, name, 1, keys)
        for name in LIVE:
            health = await online_at(probe, topics, name, 1)
            assert health["pid"] == pids[name], name
        assert sup.instances["actuator-pump"].exit_codes == []
        actuator = await online_at(probe, topics, "actuator-pump", 1)
        assert actuator["actuator"]["dry_run"] is False

        # a restart: revision 2, a new process, started with revision 2 in its file
        for name, keys in RESTART.items():
            await publish(probe, topics, name, 2, keys)
        for name, keys in RESTART.items():
            health = await online_at(probe, topics, name, 2)
            assert health["pid"] != pids[name], name
            state = sup.instances[name]
            assert state.exit_codes == [RESTART_EXIT_CODE], (name, state.exit_codes)
            written = yaml.safe_load(state.config_file.read_text())
            assert written["revision"] == 2 and all(written[k] == v for k, v in keys.items())
        # each revision's keys are laid over the running config: the aligner restarted for
        # revision 2 keeps what revision 1 changed live
        aligner = yaml.safe_load(sup.instances["aligner-pump"].config_file.read_text())
        assert aligner["use_complete"] is False and aligner["subscribe_qos"] == 0

        # the same retained revisions come back on a reconnect: nothing restarts again
        ingest = topics.status("ingest-gw")
        seen = len(probe.decoded(ingest))
        await publish(probe, topics, "ingest-gw", 2, {"coalesce_ms": 99.0})
        await probe.wait_for(ingest, count=seen + 2)  # two more status rounds
        assert probe.decoded(ingest)[-1]["health"]["pid"] != pids["ingest-gw"]
        assert sup.instances["ingest-gw"].exit_codes == [RESTART_EXIT_CODE]
    restarting = [c for c in lines if c.state == "restarting" and "config revision 2" in c.detail]
    assert {c.instance for c in restarting} == set(RESTART)
