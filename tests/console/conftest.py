"""The console's fixtures: `edgefleet console` as a process, users made with its CLI, and a
real headless Chromium (Debian's `chromium` driven by `chromium-driver` through Selenium)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait

from edgefleet.broker import free_port, wait_port
from tests.fleet.conftest import bucket, fleet, fleet_config, s3, shared_s3
from tests.site.conftest import simulator

# the fleet's and the site's fixtures
__all__ = ["bucket", "fleet", "fleet_config", "s3", "shared_s3", "simulator"]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM = os.environ.get("EDGEFLEET_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("EDGEFLEET_CHROMEDRIVER", "/usr/bin/chromedriver")
PASSWORD = "correct horse battery"
WAIT_S = 60
CLI = (sys.executable, "-m", "edgefleet.cli")


@dataclass
class ConsoleProcess:
    url: str
    state: Path
    process: subprocess.Popen[bytes]
    log: Path

    def add_user(self, name: str, role: str) -> None:
        subprocess.run(
            [*CLI, "console", "user", "add", name, "--role", role, "--state", str(self.state)],
            input=f"{PASSWORD}\n".encode(),
            check=True,
            cwd=ROOT,
        )


def start_console(tmp_path: Path, name: str, *config: str) -> ConsoleProcess:
    port = free_port()
    state = tmp_path / f"console-{name}"
    log = tmp_path / f"console-{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "console", *config, "--listen", f"127.0.0.1:{port}", "--state", str(state)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port("127.0.0.1", port, timeout=WAIT_S)
    except BaseException:
        stop(process)
        raise AssertionError(f"the console did not start:\n{log.read_text()}") from None
    return ConsoleProcess(f"http://127.0.0.1:{port}", state, process, log)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def consoles(tmp_path: Path) -> Iterator[Callable[..., ConsoleProcess]]:
    """Start consoles (`start("edge", "--site", path)`); all are stopped after the test."""
    started: list[ConsoleProcess] = []

    def start(name: str, *config: str) -> ConsoleProcess:
        console = start_console(tmp_path, name, *config)
        started.append(console)
        return console

    yield start
    for console in started:
        stop(console.process)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        pytest.fail(
            f"{CHROMIUM} or {DRIVER} is missing: scripts/bootstrap installs Debian's chromium "
            "and chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(driver: WebDriver, console: ConsoleProcess, name: str, then: str = "/") -> None:
    driver.delete_all_cookies()
    driver.get(f"{console.url}/login?next={then}")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "signin").click()
    wait(driver).until(ec.text_to_be_present_in_element((By.ID, "user"), name))


def cloud_console(
    consoles: Callable[..., ConsoleProcess],
    tmp_path: Path,
    fleet_config: dict[str, Any],
    *options: str,
) -> ConsoleProcess:
    """The fleet console on the test's fleet service (its fleet.yaml written for it)."""
    fleet_yaml = tmp_path / "fleet.yaml"
    fleet_yaml.write_text(yaml.safe_dump(fleet_config))
    return consoles("cloud", "--fleet", str(fleet_yaml), *options)


def text_of(driver: WebDriver, css: str) -> str:
    """The text of the first element `css` selects, found and read in one script: a page that
    re-renders on pushed events (the deployment page) may replace the element between a
    `find_element` and a read of its `.text` (a stale element)."""
    text = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : null",
        css,
    )
    if text is None:
        raise NoSuchElementException(f"no element matches {css}")
    return str(text)


def wait(driver: WebDriver, timeout: float = WAIT_S) -> WebDriverWait[WebDriver]:
    # a row the page just replaced is looked up again at the next poll
    return WebDriverWait(
        driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    )


def screenshot(driver: WebDriver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """What the page wrote to the browser console at level SEVERE since the last call."""
    logs: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[attr-defined]
    return [e for e in logs if e.get("level") == "SEVERE"]


def fetch_status(driver: WebDriver, path: str, body: dict[str, Any]) -> int:
    """The HTTP status of a JSON POST made by the page itself (with its session cookie)."""
    status: int = driver.execute_async_script(
        "const [path, body, done] = arguments;"
        "fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify(body)}).then((r) => done(r.status), () => done(-1));",
        path,
        body,
    )
    return status
