"""The console on an edge node (`edgefleet console --site site.yaml`), in a real Chromium: a
live site (simulator → Modbus adapter → aligner → inference) on a real mosquitto; its score
appears in the timeline and moves, the inspector shows a decoded result, the node page shows
the model's health. No errors in the browser console."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import onnx
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec

from edgefleet.broker import LocalBroker
from edgefleet.site.supervisor import SiteSupervisor
from shared.topics import Topics
from tests.console.conftest import (
    ConsoleProcess,
    console_errors,
    screenshot,
    sign_in,
    text_of,
    wait,
)
from tests.inference.models import add_metadata, column_stats, mlp, save, training_data
from tests.site.helpers import FEATURES, flow_data, site_data, write_site


def scorer(path: Path, seed: int = 2) -> Path:
    """The benchmark MLP with the metadata a trainer writes: feature names, train stats."""
    model = onnx.load(str(mlp(path, f=len(FEATURES), seed=seed)))
    stats = column_stats(training_data(f=len(FEATURES)))
    return save(add_metadata(model, [str(f) for f in FEATURES], stats), path)


def live_site(root: Path, site: str, broker: LocalBroker, modbus: int) -> Path:
    data = site_data(site, broker.port, modbus, prefix=site)
    flow = flow_data(model="pump.onnx")
    flow["model"]["shadow"] = {"path": "candidate.onnx"}  # a candidate beside the live model
    path = write_site(root, data, flow)
    scorer(root / "flows" / "pump.onnx")
    scorer(root / "flows" / "candidate.onnx", seed=7)
    return path


async def test_live_site_in_the_timeline_and_the_inspector(
    tmp_path: Path,
    broker: LocalBroker,
    site: str,
    simulator: int,
    consoles: Callable[..., ConsoleProcess],
    browser: WebDriver,
) -> None:
    path = live_site(tmp_path / "site", site, broker, simulator)
    async with SiteSupervisor(path, tmp_path / "w"):
        console = consoles("edge", "--site", str(path))
        console.add_user("olga", "viewer")
        # the browser waits block: off the loop the supervisor runs on
        await asyncio.to_thread(look_at_the_site, browser, console, site)


def look_at_the_site(browser: WebDriver, console: ConsoleProcess, site: str) -> None:
    results = Topics(site, site).results("pump")
    sign_in(browser, console, "olga", "/timeline")

    # the score series show up in the list once results flow; choose them as a person would
    def choose(text: str) -> Callable[[WebDriver], bool]:
        def box(driver: WebDriver) -> bool:
            for label in driver.find_elements(By.CSS_SELECTOR, "#series-list label"):
                if label.text.endswith(text):
                    label.find_element(By.TAG_NAME, "input").click()
                    return True
            return False

        return box

    wait(browser).until(choose("pump score"))
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#chart canvas")))
    value = "#latest td.value"
    wait(browser).until(lambda d: text_of(d, value) not in ("", "-"))
    first = text_of(browser, value)
    wait(browser).until(lambda d: text_of(d, value) not in ("", "-", first))  # it moves
    # the chart drew: uPlot's legend names the series, the draw hook counted draws
    assert "pump score" in text_of(browser, ".u-legend")
    assert browser.execute_script("return window.__ef.draws") > 1
    # live and shadow overlaid, with a raw signal on the same time axis
    wait(browser).until(choose("pump score (shadow)"))
    wait(browser).until(choose("plc1/vibration"))
    legend = (By.CSS_SELECTOR, ".u-legend")
    wait(browser).until(ec.text_to_be_present_in_element(legend, "pump score (shadow)"))
    assert "plc1/vibration" in text_of(browser, ".u-legend")
    wait(browser).until(
        lambda d: "-" not in [c.text for c in d.find_elements(By.CSS_SELECTOR, value)]
    )
    screenshot(browser, "timeline")
    zoom_and_copy(browser)

    browser.get(f"{console.url}/inspector")
    link = (By.CSS_SELECTOR, f'a[data-topic="{results}"]')
    wait(browser).until(ec.element_to_be_clickable(link)).click()
    decoded = (By.CSS_SELECTOR, "#messages pre.decoded")
    wait(browser).until(ec.text_to_be_present_in_element(decoded, '"kind": "results"'))
    assert '"score"' in text_of(browser, "#messages pre.decoded")
    assert "/s" in text_of(browser, "#topic-tree")  # message rates beside the topics
    screenshot(browser, "inspector")

    browser.get(f"{console.url}/nodes/{site}")
    main = (By.CSS_SELECTOR, "main")
    wait(browser).until(ec.text_to_be_present_in_element(main, "latency p50"))
    assert "suction_pressure" in text_of(browser, "table.drift")
    screenshot(browser, "node")
    assert console_errors(browser) == []


def clipboard(driver: WebDriver) -> str:
    """What the page put on the clipboard, read back through the browser's clipboard API."""
    text: str = driver.execute_async_script(
        "const done = arguments[0];"
        "navigator.clipboard.readText().then(done, (e) => done(`unreadable: ${e}`));"
    )
    return text


def copied_rows(driver: WebDriver) -> list[dict[str, str]]:
    """Click Copy CSV and read back the rows it put on the clipboard."""
    before = text_of(driver, "#copied")
    driver.find_element(By.ID, "copy-csv").click()
    wait(driver).until(lambda d: text_of(d, "#copied") not in ("", before))
    return list(csv.DictReader(io.StringIO(clipboard(driver))))


def drag(driver: WebDriver, start: float, end: float) -> None:
    """Drag across the chart from `start` to `end` (fractions of its plotting area's width)."""
    over = driver.find_element(By.CSS_SELECTOR, "#chart .u-over")
    width = over.size["width"]
    ActionChains(driver).move_to_element_with_offset(
        over, int((start - 0.5) * width), 0
    ).click_and_hold().move_by_offset(int((end - start) * width), 0).release().perform()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def zoom_and_copy(browser: WebDriver) -> None:
    """Drag a part of the last minute: the x axis spans it, Copy CSV gives what is drawn in
    it; Back to live: the whole window again, with new points."""
    origin = browser.current_url.split("/timeline")[0]
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    live = copied_rows(browser)
    assert live and "pump score" in " ".join(live[0])
    # the last minute, drag from 40 % to 95 % of it: 33 s, ending 3 s before now
    asked = time.time()
    drag(browser, 0.40, 0.95)
    zoomed = (By.ID, "zoom-range")
    wait(browser).until(ec.visibility_of_element_located(zoomed))
    assert "zoomed" in text_of(browser, "#status")
    assert browser.find_element(By.ID, "unzoom").is_enabled()
    shown = text_of(browser, "#zoom-range")  # "zoomed to A – B (33.0 s)"
    lo_text, hi_text = shown.removeprefix("zoomed to ").split(" (")[0].split(" – ")
    lo, hi = utc(lo_text), utc(hi_text)
    assert 30 < hi - lo < 36, shown  # the selection, not the minute
    assert asked - 60 * 0.6 - 5 < lo < asked - 60 * 0.6 + 1, (shown, asked)
    rows = copied_rows(browser)
    series = [k for k in rows[0] if k != "time"]
    assert series and all(lo <= utc(r["time"].rstrip("Z")) <= hi for r in rows)
    assert any(r[k] for r in rows for k in series)  # the score drawn in the range
    screenshot(browser, "timeline-zoomed")

    browser.find_element(By.ID, "unzoom").click()
    wait(browser).until(ec.invisibility_of_element_located(zoomed))
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "status"), "live"))
    newest = max(utc(r["time"].rstrip("Z")) for r in copied_rows(browser) if r[series[0]])
    assert newest > hi  # live again: points after the zoomed range
