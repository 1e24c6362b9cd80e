"""The fleet's console (`edgefleet console --fleet fleet.yaml`) in a real Chromium, against a
real fleet (mosquitto, SeaweedFS, the fleet service) and a live site whose agent applies what
the fleet deploys: sign in, the library lists the pushed model with its features, a deployment
started from the page reaches the node and the page shows it applied, the change is recorded
with who made it, the node's samples reach the timeline through a debug session, and a viewer
cannot deploy (no button, and the server answers 403)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.select import Select

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient
from edgefleet.site.load import load_site
from edgefleet.site.supervisor import SiteSupervisor
from tests.agent.test_agent import KEY, write_site
from tests.console.conftest import (
    ConsoleProcess,
    console_errors,
    fetch_status,
    screenshot,
    sign_in,
    wait,
)
from tests.console.test_edge_console import scorer
from tests.site.helpers import flow_data

DEPLOY_WAIT_S = 180


@pytest.fixture
def fleet_config(fleet_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The fleet signs with the key the test site trusts."""
    KEY.save(tmp_path / "fleet.key")
    return {**fleet_config, "signing_key": str(tmp_path / "fleet.key")}


async def push_versions(fleet: FleetClient, tmp: Path) -> None:
    """pump-ae@1 (with features and train stats) and the flow `pump` @1 and @2 pinning it."""
    model = scorer(tmp / "pump-ae.onnx")
    ref = (await fleet.push(model, "pump-ae", "model", note="first training"))["resource"]["ref"]
    flow = flow_data(model=None)
    flow["model"] = {"ref": ref}
    for delay in (200, 300):
        flow["align"]["max_delay_ms"] = delay
        text = yaml.safe_dump(flow, sort_keys=False)
        await fleet.call("flow.push", {"text": text, "filename": "pump.yaml", "note": f"{delay}"})


async def node_online(fleet: FleetClient, site: str) -> None:
    async with asyncio.timeout(60):
        while True:  # the fleet announces no event: its answer is the state
            nodes = (await fleet.call("node.list"))["nodes"]
            if any(n["site"] == site and n["online"] == "online" for n in nodes):
                return
            await asyncio.sleep(0.2)


async def test_deploy_from_the_page_and_a_viewer_cannot(
    tmp_path: Path,
    broker: LocalBroker,
    fleet: FleetClient,
    fleet_config: dict[str, Any],
    site: str,
    simulator: int,
    consoles: Callable[..., ConsoleProcess],
    browser: WebDriver,
) -> None:
    await push_versions(fleet, tmp_path)
    fleet_yaml = tmp_path / "fleet.yaml"
    fleet_yaml.write_text(yaml.safe_dump(fleet_config))
    path = write_site(tmp_path / "site", site, broker, simulator)
    async with SiteSupervisor(load_site(path), tmp_path / "w"):
        await node_online(fleet, site)
        console = consoles("cloud", "--fleet", str(fleet_yaml))
        console.add_user("ana", "operator")
        console.add_user("olga", "viewer")
        # the browser waits block: off the loop the fleet service and the supervisor run on
        await asyncio.to_thread(operate, browser, console, site)
        await asyncio.to_thread(view_only, browser, console)


def text_of(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def operate(browser: WebDriver, console: ConsoleProcess, site: str) -> None:
    sign_in(browser, console, "ana", "/library")
    row = 'tr[data-name="pump-ae"]'
    assert "suction_pressure, discharge_pressure, flow" in text_of(browser, f"{row} .features")
    screenshot(browser, "library")
    browser.find_element(By.LINK_TEXT, "pump-ae").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "features"), "vibration"))
    assert "sha256:" in text_of(browser, ".digest")
    screenshot(browser, "model")

    browser.get(f"{console.url}/flows/pump")
    browser.find_element(By.ID, "compare").click()  # @1 → @2, chosen by default
    wait(browser).until(ec.presence_of_element_located((By.ID, "flow-diff")))
    changed = text_of(browser, "#flow-diff tr.changed")
    assert "max_delay_ms: 200" in changed and "max_delay_ms: 300" in changed
    screenshot(browser, "flow-diff")

    browser.get(f"{console.url}/deployments")
    Select(browser.find_element(By.ID, "deploy-flow")).select_by_visible_text("pump@2")
    browser.find_element(By.CSS_SELECTOR, 'input[name=target][value="nodes"]').click()
    browser.find_element(By.ID, "deploy-nodes").send_keys(site)
    browser.find_element(By.ID, "deploy-note").send_keys("from the console")
    browser.find_element(By.ID, "deploy-submit").click()
    state = (By.CSS_SELECTOR, f'#dep-nodes tr[data-site="{site}"] td.state')
    wait(browser, DEPLOY_WAIT_S).until(ec.text_to_be_present_in_element(state, "applied"))
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "dep-state"), "succeeded"))
    assert "ana@console" in text_of(browser, "dl.facts")
    screenshot(browser, "deployment")

    browser.get(f"{console.url}/nodes")
    assert "pump@2" in text_of(browser, f'#nodes tr[data-site="{site}"]')
    screenshot(browser, "nodes")
    watch_samples(browser, console, site)
    browser.get(f"{console.url}/audit")
    assert "ana" in text_of(browser, "#audit") and "deploy" in text_of(browser, "#audit")
    assert "live.watch" in text_of(browser, "#audit")
    assert console_errors(browser) == []


def watch_samples(browser: WebDriver, console: ConsoleProcess, site: str) -> None:
    """Samples stay on the site: the timeline's Watch opens a debug session of its agent, and
    the forwarded samples become series like any other."""
    browser.get(f"{console.url}/timeline")
    browser.find_element(By.ID, "watch-site").clear()
    browser.find_element(By.ID, "watch-site").send_keys(site)
    topics = browser.find_element(By.ID, "watch-topics")
    topics.clear()
    topics.send_keys("samples/pump")
    topics.submit()
    said = (By.ID, "watch-said")
    wait(browser).until(ec.text_to_be_present_in_element(said, "debug session open"))
    series = (By.ID, "series-list")
    wait(browser).until(ec.text_to_be_present_in_element(series, "pump suction_pressure"))


def view_only(browser: WebDriver, console: ConsoleProcess) -> None:
    sign_in(browser, console, "olga", "/deployments")
    assert browser.find_elements(By.ID, "deploy-form") == []
    assert browser.find_elements(By.ID, "deploy-submit") == []
    refused = fetch_status(
        browser, "/api/cmd/deploy", {"flows": ["pump@1"], "selector": "role=pump"}
    )
    assert refused == 403
    browser.get(f"{console.url}/library/pump-ae")
    assert browser.find_elements(By.CSS_SELECTOR, "button.archive") == []
    assert fetch_status(browser, "/api/cmd/library.archive", {"ref": "pump-ae@1"}) == 403
    browser.get(f"{console.url}/audit")
    assert "refused" in text_of(browser, "#audit")  # the refusals are recorded too
    # the browser logs the two refusals asked for above, and nothing else
    errors = console_errors(browser)
    assert [e for e in errors if "403 (Forbidden)" not in e["message"]] == []
    assert len(errors) == 2
