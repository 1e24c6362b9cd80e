"""The fleet console's Nodes page with 200 nodes, in a real Chromium against a real fleet: the
nodes announce themselves as agents do (retained statuses on the cloud broker, a reported state
for some, an inference status with drift for some); the page lists all 200 with their state,
labels and drift (worst first), the groups with their members, and the selector filter keeps
exactly the nodes it matches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec

from edgefleet.fleet.client import FleetClient
from shared.messages import Status
from shared.topics import Topics
from tests.console.conftest import (
    ConsoleProcess,
    cloud_console,
    console_errors,
    screenshot,
    sign_in,
    wait,
)
from tests.fleet.test_deploy import announce, eventually, report
from tests.helpers import Probe

NODES = 200


def name(i: int) -> str:
    return f"n{i:03d}"


def labels(i: int) -> dict[str, str]:
    return {"role": "pump" if i % 2 == 0 else "compressor", "plant": f"p{i % 4}"}


def drift(i: int) -> float | None:
    return round(0.001 * i, 3) if i % 5 == 0 else None


async def inference_status(probe: Probe, prefix: str, node: str, drift_max: float) -> None:
    model = {"name": "pump-ae", "version": 1, "health": {"drift_max": drift_max}}
    health = {"inference": {"model": model}}
    status = Status(instance="inference-pump", service="inference", state="online", health=health)
    topic = Topics(node, prefix).status("inference-pump")
    await probe.publish(topic, status.to_wire(), qos=1, retain=True)


async def register(probe: Probe, fleet: FleetClient, prefix: str) -> None:
    """200 nodes; every 10th one offline (its last will), every 3rd has reported revision 1."""
    for i in range(NODES):
        await announce(probe, prefix, name(i), labels(i))
        if i % 10 == 9:  # then its last will: the fleet keeps the labels it had
            await announce(probe, prefix, name(i), labels(i), "offline")
        if i % 3 == 0:
            await report(probe, prefix, name(i), 1, "applied")
        if (d := drift(i)) is not None:
            await inference_status(probe, prefix, name(i), d)

    async def known() -> bool:
        listed = (await fleet.call("node.list"))["nodes"]
        offline = sum(n["online"] == "offline" for n in listed)
        reported = sum(n["reported_revision"] == 1 for n in listed)
        return len(listed) == NODES and offline == NODES // 10 and reported == 67

    await eventually(known, timeout=120)
    await fleet.call("group.create", {"name": "pumps-p0", "selector": "role=pump,plant=p0"})


def rows(driver: WebDriver) -> dict[str, dict[str, str]]:
    """site → the text of its row's cells, by column header."""
    head = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#nodes thead th")]
    out = {}
    for tr in driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr[data-site]"):
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        out[str(tr.get_attribute("data-site"))] = dict(zip(head, cells, strict=True))
    return out


async def test_200_nodes_and_a_selector(
    tmp_path: Path,
    fleet: FleetClient,
    fleet_config: dict[str, Any],
    site: str,
    probe: Probe,
    consoles: Callable[..., ConsoleProcess],
    browser: WebDriver,
) -> None:
    await register(probe, fleet, site)
    console = cloud_console(consoles, tmp_path, fleet_config)
    console.add_user("olga", "viewer")
    await asyncio.to_thread(look, browser, console)


def look(browser: WebDriver, console: ConsoleProcess) -> None:
    sign_in(browser, console, "olga", "/nodes")
    # the console's feed takes in the retained statuses as it starts: the drift of the worst
    # node shows once it has them all
    worst = max(i for i in range(NODES) if drift(i) is not None)

    def complete(driver: WebDriver) -> bool:
        driver.refresh()
        shown = rows(driver)
        with_drift = [s for s, r in shown.items() if r["drift max"] != "-"]
        return len(shown) == NODES and len(with_drift) == NODES // 5

    wait(browser).until(complete)
    shown = rows(browser)
    assert next(iter(shown)) == name(worst)  # sorted by drift, worst first
    for i in range(NODES):
        row = shown[name(i)]
        assert row["online"] == ("offline" if i % 10 == 9 else "online"), (name(i), row)
        assert f"role={labels(i)['role']}" in row["labels"] and f"plant=p{i % 4}" in row["labels"]
        reported = row["revision (desired / reported)"]
        assert reported.endswith("/ 1 applied" if i % 3 == 0 else "/ -"), (name(i), reported)
        d = drift(i)
        assert row["drift max"] == ("-" if d is None else f"{d:.3g}"), (name(i), row)
    members = browser.find_element(By.CSS_SELECTOR, "#groups tbody").text
    p0_pumps = [name(i) for i in range(NODES) if i % 4 == 0]  # even and plant p0
    assert f"pumps-p0 role=pump,plant=p0 {', '.join(p0_pumps)}" in members
    screenshot(browser, "nodes-200")

    box = browser.find_element(By.NAME, "selector")
    box.clear()
    box.send_keys("role=compressor,plant in (p1,p3)")
    box.submit()
    wait(browser).until(ec.url_contains("selector="))
    wanted = {name(i) for i in range(NODES) if i % 2 == 1}  # odd: compressors in p1 or p3
    assert set(rows(browser)) == wanted
    box = browser.find_element(By.NAME, "selector")
    assert box.get_attribute("value") == "role=compressor,plant in (p1,p3)"
    box.clear()
    box.send_keys("plant=p2,role!=pump")  # even plant index 2 is a pump: nobody
    box.submit()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "nodes"), "No node"))
    assert rows(browser) == {}
    assert console_errors(browser) == []
