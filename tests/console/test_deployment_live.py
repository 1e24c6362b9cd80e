"""A deployment's page follows the deployment as it moves, pushed by the console (the fleet's
DeploymentEvents and the nodes' reports, as server-sent events), not by its poll: the page's
fallback poll is set to an hour here, so only a push can change what it shows. Two nodes the
test plays (statuses and reports on the cloud broker), a staged deployment (a canary, then the
other), in a real Chromium against a real fleet."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec

from edgefleet.fleet.client import FleetClient
from tests.console.conftest import (
    ConsoleProcess,
    cloud_console,
    console_errors,
    screenshot,
    sign_in,
    wait,
)
from tests.console.test_cloud_console import fleet_config, push_versions
from tests.fleet.test_deploy import announce, nodes_known, report
from tests.helpers import Probe

__all__ = ["fleet_config"]  # the fleet signs with the key the agents trust

NODES = ("a1", "a2")
STAGE = '#dep-stages tr[data-stage="{}"] td.state'.format
STATE = '#dep-nodes tr[data-site="{}"] td.state'.format


async def test_the_page_moves_with_the_deployment(
    tmp_path: Path,
    fleet: FleetClient,
    fleet_config: dict[str, Any],
    site: str,
    probe: Probe,
    consoles: Callable[..., ConsoleProcess],
    browser: WebDriver,
) -> None:
    await push_versions(fleet, tmp_path)
    for node in NODES:
        await announce(probe, site, node, {"role": "pump"})
    await nodes_known(fleet, len(NODES))
    strategy = {"stages": ["1"], "abort_above": "0", "soak_s": 0}
    made = await fleet.call("deploy", {"flows": ["pump@1"], "nodes": list(NODES),
                                       "strategy": strategy})  # fmt: skip
    dep = made["deployment"]["id"]
    shown = await fleet.call("deployment.show", {"id": dep})
    revision = {n["site"]: n["revision"] for n in shown["nodes"]}
    console = cloud_console(consoles, tmp_path, fleet_config, "--deployment-poll-s", "3600")
    console.add_user("olga", "viewer")
    await asyncio.to_thread(opened, browser, console, dep)

    await report(probe, site, "a1", revision["a1"], "applied")  # the canary: stage 1 holds
    await asyncio.to_thread(stage_moved, browser)
    shown = await fleet.call("deployment.show", {"id": dep})  # stage 2 issued a2's revision
    second = {n["site"]: n["revision"] for n in shown["nodes"]}["a2"]
    await report(probe, site, "a2", second, "applied")
    await asyncio.to_thread(finished, browser)


def shows(driver: WebDriver, css: str, text: str) -> None:
    """Until the element shows exactly `text` (the page replaces its rows at each refresh)."""
    wait(driver).until(
        lambda d: d.find_element(By.CSS_SELECTOR, css).text == text, f"{css}: {text}"
    )


def opened(browser: WebDriver, console: ConsoleProcess, dep: str) -> None:
    sign_in(browser, console, "olga", f"/deployments/{dep}")
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "dep-live"), "(live)"))
    shows(browser, STAGE(1), "in_progress")
    shows(browser, STAGE(2), "waiting")
    shows(browser, STATE("a1"), "pending")


def stage_moved(browser: WebDriver) -> None:
    shows(browser, STAGE(1), "held")
    shows(browser, STAGE(2), "in_progress")
    shows(browser, STATE("a1"), "applied")
    shows(browser, "#dep-state", "in_progress")


def finished(browser: WebDriver) -> None:
    shows(browser, "#dep-state", "succeeded")
    shows(browser, STAGE(2), "held")
    shows(browser, STATE("a2"), "applied")
    screenshot(browser, "deployment-live")
    assert console_errors(browser) == []
