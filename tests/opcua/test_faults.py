"""Fault paths of the adapter's session: a server that answers nothing on an open connection, and
a node id the server refuses at first and offers later."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Any, cast

from asyncua import ua

from edgefleet.sim.opcua_server import node_id
from edgefleet.sim.plant import PlantSimulator
from services.opcua.service import main
from shared.messages import Quality
from shared.topics import Topics
from tests.helpers import FreezableProxy, Probe, running
from tests.opcua.conftest import Served, make_config
from tests.opcua.test_adapter import SIGNALS, check_good_were_served, readings

DEAD = ("no publish or keep-alive", "connection lost", "transport")


async def test_server_that_answers_nothing_is_noticed_and_the_session_rebuilt(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    raw = topics.raw("opc1")
    await probe.subscribe(topics.everything())
    async with PlantSimulator(seed=9, modbus=False) as sim:
        served = Served(sim)
        served.note_now(sim)  # before the first tick: what start() served
        async with FreezableProxy(sim.host, sim.opcua_port or 0) as proxy:
            endpoint = f"opc.tcp://127.0.0.1:{proxy.port}/edgefleet/sim"
            cfg = make_config({**base_config, "site": site}, endpoint, SIGNALS)
            async with running(main(cfg)):
                await probe.wait_for(raw, lambda b: bool((b["q"] == 0).any()), count=3, timeout=15)
                proxy.freeze()
                [err] = await probe.wait_for(
                    topics.errors("opcua-sim"), lambda e: any(d in e["reason"] for d in DEAD)
                )
                await probe.wait_for(raw, lambda b: bool((b["q"] == 2).all()))
                await probe.wait_for(
                    topics.status("opcua-sim"),
                    lambda s: (
                        not s["health"]["opcua"]["connected"]
                        and s["health"]["opcua"]["state"] == "reconnecting"
                    ),
                )
                # still frozen: rebuilds are tried (new connections) and nothing good comes
                tries = proxy.connections
                await probe.wait_for(
                    topics.status("opcua-sim"),
                    lambda s: proxy.connections > tries + 1,
                    timeout=20,
                )
                n_before_thaw = len(probe.received(raw))
                proxy.thaw()
                thawed_ns = time.time_ns()
                await probe.wait_for(
                    raw,
                    lambda b: bool(((b["q"] == 0) & (b["t"] > thawed_ns - 1e9)).any()),
                    timeout=15,
                )
                status = (
                    await probe.wait_for(
                        topics.status("opcua-sim"),
                        lambda s: (
                            s["health"]["opcua"]["connected"]
                            and s["health"]["opcua"]["sessions"] >= 2
                        ),
                    )
                )[-1]
    print(f"noticed as: {err['reason']}; connections through the proxy: {proxy.connections}")
    batches = probe.decoded(raw)
    # between the bad marker and the thaw nothing good was reported
    first_bad = next(i for i, b in enumerate(batches) if bool((b["q"] == 2).all()))
    assert all(not (b["q"] == 0).any() for b in batches[first_bad:n_before_thaw])
    rows = readings(batches)
    assert check_good_were_served(rows, served) >= 10
    opcua = status["health"]["opcua"]
    assert opcua["state"] == "connected" and opcua["failed_nodes"] == {}


async def test_silent_server_is_noticed_by_the_adapters_own_deadline(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    """The server stops publishing and sending keep-alives, on a connection that stays open and
    still takes requests (the proxy holds only what the server sends). The adapter's deadline,
    the revised keep-alive period times dead_after_keepalives (~1.5 s), acts before asyncua's
    check (every 3 s) and names the silence; the report is not held up by a CloseSession that
    would wait request_timeout_s (8 s) for a server that answers nothing."""
    topics = Topics(site)
    raw = topics.raw("opc1")
    await probe.subscribe(topics.everything())
    watchdog = {
        "request_timeout_s": 8.0,
        "keepalive_s": 0.5,
        "dead_after_keepalives": 3,
        "stall_after_s": None,
        "check_s": 0.1,
        "reconnect_initial_s": 0.2,
        "reconnect_max_s": 0.5,
    }
    async with (
        PlantSimulator(seed=5, modbus=False) as sim,
        FreezableProxy(sim.host, sim.opcua_port or 0) as proxy,
    ):
        endpoint = f"opc.tcp://127.0.0.1:{proxy.port}/edgefleet/sim"
        cfg = make_config({**base_config, "site": site}, endpoint, SIGNALS, watchdog=watchdog)
        async with running(main(cfg)):
            await probe.wait_for(raw, lambda b: bool((b["q"] == 0).any()), count=3, timeout=15)
            silent = time.monotonic()
            proxy.freeze(downstream_only=True)
            [err] = await probe.wait_for(topics.errors("opcua-sim"), timeout=7)
            noticed_s = time.monotonic() - silent
            await probe.wait_for(raw, lambda b: bool((b["q"] == 2).all()))
            proxy.thaw()
            thawed_ns = time.time_ns()
            await probe.wait_for(
                raw,
                lambda b: bool(((b["q"] == 0) & (b["t"] > thawed_ns - 1e9)).any()),
                timeout=20,
            )
    print(f"noticed after {noticed_s:.2f} s as: {err['reason']}")
    assert "no publish or keep-alive for" in err["reason"], err["reason"]
    assert noticed_s < 4.0  # the adapter's ~1.5 s deadline, long before asyncua's 8 s


async def test_node_that_appears_later_is_subscribed_by_the_retry(
    base_config: dict[str, Any], probe: Probe, site: str
) -> None:
    topics = Topics(site)
    raw = topics.raw("opc1")
    await probe.subscribe(topics.everything())
    signals: list[dict[str, Any]] = [
        *SIGNALS[:2],
        {"name": "late", "node": node_id("Late")},
        {"name": "elsewhere", "node": "nsu=urn:edgefleet:nowhere;s=Pump.Flow"},
    ]
    async with PlantSimulator(seed=10, modbus=False) as sim:
        assert sim.opcua is not None
        served = Served(sim)
        served.note_now(sim)
        cfg = make_config({**base_config, "site": site}, sim.opcua_endpoint or "", signals)
        async with running(main(cfg)):
            [err] = await probe.wait_for(
                topics.errors("opcua-sim"), lambda e: "late" in e["reason"]
            )
            assert "late (BadNodeIdUnknown)" in err["reason"]
            [err] = await probe.wait_for(
                topics.errors("opcua-sim"), lambda e: "elsewhere" in e["reason"]
            )
            assert "elsewhere (BadNodeIdInvalid" in err["reason"]
            await probe.wait_for(
                raw, lambda b: bool(((b["sig"] == 0) & (b["q"] == 0)).any()), count=3
            )
            await probe.wait_for(
                topics.status("opcua-sim"),
                lambda s: "late" in s["health"]["opcua"]["failed_nodes"],
            )
            # the scenario: the node stays missing over several retries (retry_nodes_s 0.5)
            await asyncio.sleep(2.0)
            # the node is created on the running server, with a value of a known source time
            server = sim.opcua._server
            assert server is not None
            pump = server.get_node(f"ns={sim.opcua.ns};s=Pump")
            node = await pump.add_variable(
                node_id("Late", sim.opcua.ns), f"{sim.opcua.ns}:Late", 0.0, ua.VariantType.Double
            )
            source_ns = time.time_ns() // 1000 * 1000
            await server.write_attribute_value(
                node.nodeid,
                ua.DataValue(
                    ua.Variant(42.5, ua.VariantType.Double),
                    SourceTimestamp=cast(Any, datetime.fromtimestamp(source_ns / 1e9, tz=UTC)),
                ),
            )
            await probe.wait_for(
                raw, lambda b: bool(((b["sig"] == 2) & (b["q"] == 0)).any()), timeout=10
            )
            status = (
                await probe.wait_for(
                    topics.status("opcua-sim"),
                    lambda s: (
                        list(s["health"]["opcua"]["failed_nodes"]) == ["elsewhere"]
                        and s["health"]["opcua"]["connected"]
                    ),
                )
            )[-1]
            # what that status counted sessions for: a session rebuilt later (a loaded machine)
            # would add a bad reading of every signal, and a good one of `late` again
            errors = probe.decoded(topics.errors("opcua-sim"))
            rows = readings(probe.decoded(raw))
    sessions = status["health"]["opcua"]["sessions"]
    good_late = [(t, v) for name, t, v, q in rows if name == "late" and q == Quality.GOOD]
    # the value with its source time; again only from a session rebuilt since (its first value)
    assert set(good_late) == {(source_ns, 42.5)} and len(good_late) <= sessions, good_late
    bad_late = [v for name, _, v, q in rows if name == "late" and q != Quality.GOOD]
    # one bad reading per session, not one per retry (a loaded machine may rebuild the session)
    assert 1 <= len(bad_late) <= sessions and all(math.isnan(v) for v in bad_late)
    bad_elsewhere = [v for name, _, v, q in rows if name == "elsewhere"]
    assert 1 <= len(bad_elsewhere) <= sessions and all(math.isnan(v) for v in bad_elsewhere)
    check_good_were_served([r for r in rows if r[0] != "late"], served)
    assert any(r[0] == "flow" and r[3] == Quality.GOOD for r in rows)
    assert status["health"]["opcua"]["connected"]
    # reported once each per session, not once per retry
    assert 1 <= len([e for e in errors if "late" in e["reason"]]) <= sessions
    assert 1 <= len([e for e in errors if "elsewhere" in e["reason"]]) <= sessions
