"""The fleet's console (`edgefleet console --fleet fleet.yaml`) in a real Chromium, against a
real fleet (mosquitto, SeaweedFS, the fleet service) and a live site whose agent applies what
the fleet deploys: sign in, the library lists the pushed model with its features, a deployment
started from the page reaches the node and the page shows it applied, the change is recorded
with who made it, the node's samples reach the timeline through a debug session; a staged
deployment with a canary is created from the page, shown per stage, paused, resumed, rolled back
and cancelled from it; and a viewer can neither deploy nor pause (no button, and the server
answers 403)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
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
from tests.agent.nodes import write_node
from tests.agent.test_agent import KEY
from tests.console.conftest import (
    ConsoleProcess,
    cloud_console,
    console_errors,
    fetch_status,
    screenshot,
    sign_in,
    text_of,
    wait,
)
from tests.console.test_edge_console import scorer
from tests.fleet.test_deploy import announce, probe, report
from tests.helpers import Probe
from tests.site.helpers import flow_data

__all__ = ["probe"]

DEPLOY_WAIT_S = 180
CANARY = "canary1"  # a node the test plays (status and reports): before the site in site order
Play = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture
def fleet_config(fleet_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The fleet signs with the key the test site trusts."""
    KEY.save(tmp_path / "fleet.key")
    return {**fleet_config, "signing_key": str(tmp_path / "fleet.key")}


async def push_versions(fleet: FleetClient, tmp: Path) -> None:
    """pump-ae@1 (with features and train stats) and the flow `pump` @1, @2, @3 pinning it."""
    model = scorer(tmp / "pump-ae.onnx")
    ref = (await fleet.push(model, "pump-ae", "model", note="first training"))["resource"]["ref"]
    flow = flow_data(model=None)
    flow["model"] = {"ref": ref}
    for delay in (200, 300, 400):
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
    probe: Probe,
) -> None:
    await push_versions(fleet, tmp_path)
    await announce(probe, site, CANARY, {"role": "pump"})
    loop = asyncio.get_running_loop()

    def play(step: Coroutine[Any, Any, None]) -> None:
        """Run a step of the played node on the test's loop, from the browser's thread."""
        asyncio.run_coroutine_threadsafe(step, loop).result(timeout=30)

    path = write_node(tmp_path / "site", site, site, broker, simulator, KEY, 20)
    async with SiteSupervisor(load_site(path), tmp_path / "w"):
        await node_online(fleet, site)
        console = cloud_console(consoles, tmp_path, fleet_config)
        console.add_user("ana", "operator")
        console.add_user("olga", "viewer")
        # the browser waits block: off the loop the fleet service and the supervisor run on
        await asyncio.to_thread(operate, browser, console, site)
        dep = await asyncio.to_thread(
            staged,
            browser,
            console,
            site,
            lambda rev: play(report(probe, site, CANARY, rev, "applied")),
        )
        await asyncio.to_thread(view_only, browser, console, dep)


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
    browser.find_element(By.ID, "compare").click()  # @2 → @3, chosen by default
    wait(browser).until(ec.presence_of_element_located((By.ID, "flow-diff")))
    changed = text_of(browser, "#flow-diff tr.changed")
    assert "max_delay_ms: 300" in changed and "max_delay_ms: 400" in changed
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


def staged(
    browser: WebDriver, console: ConsoleProcess, site: str, canary_applied: Callable[[int], None]
) -> str:
    """A canary, then the rest: created, paused and resumed from the page; then rolled back
    and the rollback cancelled from the page. The staged deployment's id."""
    browser.get(f"{console.url}/deployments")
    Select(browser.find_element(By.ID, "deploy-flow")).select_by_visible_text("pump@3")
    browser.find_element(By.CSS_SELECTOR, 'input[name=target][value="nodes"]').click()
    browser.find_element(By.ID, "deploy-nodes").send_keys(f"{site}, {CANARY}")
    browser.find_element(By.ID, "deploy-stages").send_keys("1")  # one canary, then the rest
    browser.find_element(By.ID, "deploy-abort").send_keys("0")
    browser.find_element(By.ID, "deploy-soak").send_keys("0")  # no pause: stage 2 at once
    browser.find_element(By.ID, "deploy-note").send_keys("canary first")
    browser.find_element(By.ID, "deploy-dry").click()
    plan = (By.ID, "deploy-plan")
    wait(browser).until(ec.text_to_be_present_in_element(plan, f"stage 1 of 2: {CANARY}\n"))
    assert f"stage 2 of 2: {site}\n" in text_of(browser, "#deploy-plan")
    screenshot(browser, "deployments-plan")
    browser.find_element(By.ID, "deploy-submit").click()
    wait(browser).until(ec.element_to_be_clickable((By.ID, "dep-pause"))).click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "dep-state"), "paused"))
    dep = browser.find_element(By.ID, "dep-nodes").get_attribute("data-dep")
    assert dep
    assert "stages 1; abort above 0; soak 0.0 s" in text_of(browser, "#dep-strategy")
    stage = 'tr[data-stage="{}"] td.state'.format
    canary, node = f'tr[data-site="{CANARY}"]', f'#dep-nodes tr[data-site="{site}"]'
    assert text_of(browser, f"#dep-stages {stage(1)}") == "in_progress"
    assert (
        text_of(browser, f"{canary} td.stage") == "1"
        and text_of(browser, f"{node} td.stage") == "2"
    )
    assert text_of(browser, f"{node} td.state") == "waiting"
    revision = text_of(browser, f"{canary} td.revision")
    canary_applied(int(revision))
    # the canary's stage held; paused, the next stage waits (unpaused it would start at once)
    held = (By.CSS_SELECTOR, f"#dep-stages {stage(1)}")
    wait(browser).until(ec.text_to_be_present_in_element(held, "held"))
    assert text_of(browser, "#dep-state") == "paused"
    assert text_of(browser, f"{node} td.state") == "waiting"
    assert text_of(browser, f"#dep-stages {stage(2)}") == "waiting"
    browser.find_element(By.ID, "dep-resume").click()
    applied = (By.CSS_SELECTOR, f"{node} td.state")
    wait(browser, DEPLOY_WAIT_S).until(ec.text_to_be_present_in_element(applied, "applied"))
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "dep-state"), "succeeded"))
    assert text_of(browser, f"#dep-stages {stage(2)}") == "held"
    screenshot(browser, "deployment-staged")

    # roll back from the page: pump@2 to every node that runs pump (the played one never answers)
    browser.find_element(By.CSS_SELECTOR, 'button.rollback[data-to="2"]').click()
    browser.switch_to.alert.accept()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "dep-flows"), "pump@2"))
    assert dep not in browser.current_url
    wait(browser, DEPLOY_WAIT_S).until(ec.text_to_be_present_in_element(applied, "applied"))
    assert text_of(browser, f"{canary} td.state") == "pending"
    assert text_of(browser, "#dep-state") == "in_progress"
    browser.find_element(By.ID, "dep-cancel").click()
    browser.switch_to.alert.accept()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "dep-state"), "cancelled"))
    assert text_of(browser, f"{canary} td.state") == "cancelled"
    assert text_of(browser, f"{node} td.state") == "applied"  # what had applied stays
    assert browser.find_element(By.ID, "dep-cancel").get_attribute("disabled") is not None
    browser.refresh()  # the fleet's own record says who cancelled it
    assert text_of(browser, "#dep-cancelled").endswith("by ana@console")
    browser.get(f"{console.url}/audit")
    audit = text_of(browser, "#audit")
    for action in ("deployment.pause", "deployment.resume", "rollback", "deployment.cancel"):
        assert action in audit
    assert console_errors(browser) == []
    return dep


def view_only(browser: WebDriver, console: ConsoleProcess, staged_dep: str) -> None:
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
    browser.get(f"{console.url}/deployments/{staged_dep}")
    wait(browser).until(ec.presence_of_element_located((By.ID, "dep-stages")))
    for button in ("dep-pause", "dep-resume", "dep-cancel"):
        assert browser.find_elements(By.ID, button) == []
    assert fetch_status(browser, "/api/cmd/deployment.pause", {"id": staged_dep}) == 403
    browser.get(f"{console.url}/audit")
    assert "refused" in text_of(browser, "#audit")  # the refusals are recorded too
    # the browser logs the three refusals asked for above, and nothing else
    errors = console_errors(browser)
    assert [e for e in errors if "403 (Forbidden)" not in e["message"]] == []
    assert len(errors) == 3
