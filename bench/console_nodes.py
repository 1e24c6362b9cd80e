"""The fleet console's Nodes page at 1, 200 and 1,000 nodes, against the raw handler call.

One mosquitto, SeaweedFS, the fleet service (`edgefleet run fleet`) and the fleet console
(`edgefleet console --fleet`), each its own process. The nodes announce themselves as agents do:
a retained agent status with labels (role, plant), a retained reported state for a third of
them, a retained inference status with drift for a fifth (what the model health column reads).

Per fleet size, each figure the median (and p90) of `--repeat` runs:
- raw: `node.list` and `group.list` through the fleet's MQTT command API from this process,
  what the page needs from the fleet before it renders anything;
- server: the console's own time for GET /nodes (its `Server-Timing`: the fleet calls, the
  model health per node, the template), and the whole response as an HTTP client sees it;
- browser (headless Chromium): a reload of /nodes, navigation timing: first contentful paint,
  response end → DOM interactive (parsing the table), the page's scripts (DOMContentLoaded
  handlers) and load end.
The 1-node row is the baseline in the same run; ratios are against it and against raw.

    PYTHONPATH=. .venv/bin/python bench/console_nodes.py [--sizes 1,200,1000] [--repeat 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgefleet.broker import LocalBroker, free_port, wait_port  # noqa: E402
from edgefleet.fleet.client import FleetClient, connect  # noqa: E402
from edgefleet.locals3 import LocalS3  # noqa: E402
from shared.codec import encode  # noqa: E402
from shared.messages import ReportedState, Status  # noqa: E402
from shared.mqtt import BrokerSettings, MqttConnection  # noqa: E402
from shared.topics import Topics  # noqa: E402

PREFIX, PASSWORD = "nb", "bench password"


def node(i: int) -> str:
    return f"n{i:04d}"


async def announce(port: int, first: int, last: int) -> None:
    """Nodes first..last-1 as their agents would publish them (retained, QoS 1)."""
    conn = MqttConnection(BrokerSettings(port=port, client_id=f"bench-nodes-{first}"))
    task = asyncio.create_task(conn.run())
    await conn.wait_connected()

    async def put(topic: str, body: Any) -> None:
        payload, ct = encode(body.to_wire())
        await conn.publish(topic, payload, content_type=ct, qos=1, retain=True)

    for i in range(first, last):
        t = Topics(node(i), PREFIX)
        labels = {"role": "pump" if i % 2 == 0 else "compressor", "plant": f"p{i % 10}"}
        health = {"agent": {"labels": labels, "versions": {"edgefleet": "0.4.0"}}}
        await put(t.status("agent"), Status(instance="agent", service="agent", state="online",
                                             health=health))  # fmt: skip
        if i % 3 == 0:
            await put(t.reported(), ReportedState(site=node(i), revision=1, state="applied"))
        if i % 5 == 0:
            model = {"name": "pump-ae", "version": 1, "health": {"drift_max": 0.001 * i,
                     "latency_us": {"p50": 400, "p99": 900}}}  # fmt: skip
            await put(t.status("inference-pump"), Status(
                instance="inference-pump", service="inference", state="online",
                health={"inference": {"model": model}}))  # fmt: skip
    task.cancel()


async def until(check: Any, timeout: float = 300) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (a command's answer is the state: no event)
            await asyncio.sleep(0.2)


def spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)  # fmt: skip


def stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


async def timed_call(fleet: FleetClient, cmd: str, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fleet.call(cmd, timeout=60)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def server_times(opener: Any, url: str, repeat: int) -> tuple[list[float], list[float], int]:
    """(console's own ms from Server-Timing, client ms, bytes) per GET /nodes."""
    own, whole, size = [], [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        with opener.open(f"{url}/nodes") as r:
            body = r.read()
            timing = r.headers.get("Server-Timing", "")
        whole.append((time.perf_counter() - t0) * 1e3)
        own.append(float(timing.split("dur=")[1]) if "dur=" in timing else float("nan"))
        size = len(body)
    return own, whole, size


NAV = """
const n = performance.getEntriesByType("navigation")[0];
return {fcp: window.__rendered || 0, parse: n.domInteractive - n.responseEnd,
        scripts: n.domContentLoadedEventEnd - n.domContentLoadedEventStart,
        load: n.loadEventEnd, ttfb: n.responseStart - n.requestStart,
        rows: document.querySelectorAll("#nodes tbody tr[data-site]").length};
"""


# first render: the frame after DOMContentLoaded (headless Chromium records no paint timing)
RENDERED = """
document.addEventListener("DOMContentLoaded", () => requestAnimationFrame(() =>
  setTimeout(() => { window.__rendered = performance.now(); })));
"""


def browser_times(driver: Any, url: str, repeat: int, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"fcp": [], "parse": [], "scripts": [], "load": [], "ttfb": []}
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RENDERED})
    driver.get(f"{url}/nodes")
    for _ in range(repeat):
        driver.refresh()
        while (got := driver.execute_script(NAV))["load"] == 0 or not got["fcp"]:
            time.sleep(0.05)  # the load event has not ended yet
        assert got["rows"] == n, got
        for k in out:
            if got[k] is not None:
                out[k].append(float(got[k]))
    return out


async def run(args: argparse.Namespace) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = LocalBroker(tmp / "broker").start()
        s3 = LocalS3(tmp / "s3").start()
        os.environ["NB_S3_SECRET"] = s3.secret_key
        config = {
            "prefix": PREFIX,
            "broker": {"host": broker.host, "port": broker.port},
            "db": str(tmp / "fleet.db"),
            "work_dir": str(tmp / "work"),
            "log_level": "WARNING",
            "s3": {"endpoint": s3.endpoint, "access_key": s3.access_key,
                   "secret_key_env": "NB_S3_SECRET"},
        }  # fmt: skip
        fleet_yaml = tmp / "fleet.yaml"
        fleet_yaml.write_text(yaml.safe_dump(config))
        procs = [spawn(tmp / "fleet.log", "-m", "edgefleet.cli", "run", "fleet", "--config",
                       str(fleet_yaml))]  # fmt: skip
        state = ["--state", str(tmp / "console")]
        subprocess.run([sys.executable, "-m", "edgefleet.cli", "console", "user", "add", "bench",  # noqa: ASYNC221
                        "--role", "viewer", *state], cwd=ROOT, input=f"{PASSWORD}\n".encode(),
                       check=True, capture_output=True)  # fmt: skip
        port = free_port()
        procs.append(spawn(tmp / "console.log", "-m", "edgefleet.cli", "console", "--fleet",
                           str(fleet_yaml), "--listen", f"127.0.0.1:{port}", "--log-level",
                           "WARNING", *state))  # fmt: skip
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                  "--window-size=1400,1000"):  # fmt: skip
            options.add_argument(a)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        rows: list[dict[str, Any]] = []
        try:
            wait_port("127.0.0.1", port, timeout=120)
            url = f"http://127.0.0.1:{port}"
            jar = CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            login = urllib.parse.urlencode({"name": "bench", "password": PASSWORD}).encode()
            opener.open(f"{url}/login", login)
            driver.get(f"{url}/login")
            driver.find_element(By.ID, "name").send_keys("bench")
            driver.find_element(By.ID, "password").send_keys(PASSWORD)
            driver.find_element(By.ID, "signin").click()
            async with connect(f"{broker.host}:{broker.port}", prefix=PREFIX, timeout=120) as fleet:
                for _ in range(200):
                    try:
                        await fleet.call("library.list", timeout=0.5)
                        break
                    except Exception:  # not serving yet
                        await asyncio.sleep(0.2)
                await fleet.call("group.create", {"name": "pumps", "selector": "role=pump"})
                await fleet.call("group.create", {"name": "p1", "selector": "plant=p1"})
                have = 0
                for n in sizes:
                    await announce(broker.port, have, n)
                    have = n

                    async def listed(n: int = n) -> bool:
                        return len((await fleet.call("node.list", timeout=60))["nodes"]) >= n

                    async def heard(n: int = n) -> bool:  # the console has every status
                        q = urllib.parse.urlencode({"contains": "/status/"})
                        got = json.loads(opener.open(f"{url}/api/inspector/topics?{q}").read())
                        return len(got["topics"]) >= n + -(-n // 5)

                    await until(listed)
                    await until(heard)
                    node_list = await timed_call(fleet, "node.list", args.repeat)
                    group_list = await timed_call(fleet, "group.list", args.repeat)
                    own, whole, size = server_times(opener, url, args.repeat)
                    page = browser_times(driver, url, args.repeat, n)
                    rows.append({"nodes": n, "node.list": stats(node_list),
                                 "group.list": stats(group_list), "console": stats(own),
                                 "http": stats(whole), "bytes": size,
                                 **{k: stats(v) for k, v in page.items()}})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            driver.quit()
            for p in procs:
                p.terminate()
                p.wait(15)
            s3.stop()
            broker.stop()
    report(rows)


def report(rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    cols = ["node.list", "group.list", "console", "http", "fcp", "parse", "scripts", "load"]
    print("\nms, median (p90); x = median / the first row's median")
    print("| nodes | " + " | ".join(cols) + " | page bytes |")
    print("|---" * (len(cols) + 2) + "|")
    for r in rows:
        cells = []
        for c in cols:
            med, p90 = r[c]
            ratio = med / base[c][0] if base[c][0] else float("nan")
            cells.append(f"{med:.1f} ({p90:.1f}) x{ratio:.1f}")
        print(f"| {r['nodes']} | " + " | ".join(cells) + f" | {r['bytes']:,} |")
    for r in rows:
        raw = r["node.list"][0] + r["group.list"][0]
        print(f"{r['nodes']} nodes: console handler {r['console'][0]:.1f} ms = "
              f"x{r['console'][0] / raw:.2f} the raw fleet calls ({raw:.1f} ms)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="1,200,1000")
    p.add_argument("--repeat", type=int, default=10)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
