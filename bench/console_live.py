"""The console's live timeline under load: a 1 kHz signal plus 20 series at 10 Hz published on
a real mosquitto, `edgefleet console --site` reading it, 10 viewers on the timeline (one real
headless Chromium drawing with uPlot, the others SSE clients of the same stream).

Reports the console's CPU, the browser's frame rate (requestAnimationFrame callbacks/s) and
chart draws/s, the bytes/s one viewer receives against the readings/s published (what the
min/max decimation saves), and the time from a value's publication to the draw that first
shows it (p50/p99; the page's draw hook records it), against the raw limit measured in the
same run: publish → an MQTT subscriber in this process, through the same broker.

    PYTHONPATH=. .venv/bin/python bench/console_live.py --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgefleet.broker import LocalBroker, free_port, wait_port  # noqa: E402
from shared.codec import encode  # noqa: E402
from shared.mqtt import BrokerSettings, MqttConnection, Received  # noqa: E402
from shared.topics import Topics  # noqa: E402

SITE, PASSWORD = "bench", "bench password"
FAST_BATCH = 10  # readings per message of the 1 kHz signal (an adapter batches per poll)


def batch(
    source: str, signals: list[str], t: np.ndarray[Any, Any], v: np.ndarray[Any, Any]
) -> tuple[bytes, str]:
    n = len(t)
    sig = np.repeat(np.arange(len(signals), dtype=np.uint16), n // len(signals))
    body = {"v": 1, "kind": "readings", "source": source, "signals": signals, "t": t,
            "sig": sig, "value": v, "q": np.zeros(n, np.uint8)}  # fmt: skip
    return encode(body)


async def publish(port: int, stop: threading.Event, counts: dict[str, int]) -> None:
    """1 kHz on plc/fast in batches of 10, 20 signals at 10 Hz on slow; t = publish time."""
    topics = Topics(SITE)
    conn = MqttConnection(BrokerSettings(port=port, client_id="bench-pub"))
    task = asyncio.create_task(conn.run())
    await conn.wait_connected()
    slow = [f"s{i:02d}" for i in range(20)]
    start, k = time.perf_counter(), 0
    while not stop.is_set():
        k += 1
        now = time.time_ns()
        t = now - (np.arange(FAST_BATCH)[::-1] * 1_000_000)
        v = np.sin(t / 2e8) + 0.05 * np.random.default_rng(k).normal(size=FAST_BATCH)
        await conn.publish(topics.raw("fast"), *batch("fast", ["x"], t, v)[:1],
                           content_type="application/msgpack")  # fmt: skip
        counts["readings"] += FAST_BATCH
        if k % 10 == 0:
            ts = np.repeat(np.array([now]), 20)
            vs = np.arange(20) + np.sin(now / 1e9)
            payload, ct = batch("slow", slow, ts, vs)
            await conn.publish(topics.raw("slow"), payload, content_type=ct)
            counts["readings"] += 20
        await asyncio.sleep(max(0.0, start + k * FAST_BATCH / 1000 - time.perf_counter()))
    task.cancel()


async def raw_latency(port: int, n: int = 300) -> list[float]:
    """The raw limit: publish → an MQTT subscriber in this process, in ms."""
    got: asyncio.Queue[float] = asyncio.Queue()

    async def on(message: Received) -> None:
        await got.put(time.time_ns() / 1e6 - float(message.payload.decode()) / 1e6)

    sub = MqttConnection(BrokerSettings(port=port, client_id="bench-sub"), on)
    await sub.subscribe("bench/raw", qos=0)
    pub = MqttConnection(BrokerSettings(port=port, client_id="bench-raw"))
    tasks = [asyncio.create_task(sub.run()), asyncio.create_task(pub.run())]
    await sub.wait_connected()
    await pub.wait_connected()
    await asyncio.sleep(0.3)
    out = []
    for _ in range(n):
        await pub.publish("bench/raw", str(time.time_ns()).encode())
        out.append(await asyncio.wait_for(got.get(), 5))
        await asyncio.sleep(0.01)
    for task in tasks:
        task.cancel()
    return out


def sse_viewer(url: str, cookie: str, stop: threading.Event, stats: dict[str, int]) -> None:
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=30) as stream:
        while not stop.is_set():
            line = stream.readline()
            if not line:
                return
            stats["bytes"] += len(line)
            stats["events"] += line.startswith(b"data:")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=30.0, help="measured time (after 5 s warm-up)")
    p.add_argument("--viewers", type=int, default=10, help="viewers in all (one is Chromium)")
    p.add_argument("--window-s", type=int, default=60)
    args = p.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    tmp = Path(tempfile.mkdtemp(prefix="console-bench-"))
    broker = LocalBroker(tmp / "broker").start()
    (tmp / "site.yaml").write_text(
        f"site: {SITE}\nbroker: {{host: 127.0.0.1, port: {broker.port}}}\n"
    )
    cli = [sys.executable, "-m", "edgefleet.cli", "console"]
    state = ["--state", str(tmp / "state")]
    subprocess.run([*cli, "user", "add", "bench", "--role", "viewer", *state], cwd=ROOT,
                   input=f"{PASSWORD}\n".encode(), check=True, capture_output=True)  # fmt: skip
    port = free_port()
    console = subprocess.Popen([*cli, "--site", str(tmp / "site.yaml"), "--listen",
                                f"127.0.0.1:{port}", *state], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    stop = threading.Event()
    counts = {"readings": 0}
    loop_thread = threading.Thread(target=lambda: asyncio.run(publish(broker.port, stop, counts)))
    driver = None
    viewers: list[threading.Thread] = []
    try:
        wait_port("127.0.0.1", port, timeout=60)
        url = f"http://127.0.0.1:{port}"
        raw = asyncio.run(raw_latency(broker.port))
        loop_thread.start()
        time.sleep(2)  # the series exist once their first batches arrived

        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(
            f"{url}/login", urllib.parse.urlencode({"name": "bench", "password": PASSWORD}).encode()
        )
        cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
        series = json.loads(opener.open(f"{url}/api/live/series").read())["series"]
        ids = [s["id"] for s in series]
        fast = f"{Topics(SITE).raw('fast')}#x"
        assert fast in ids and len(ids) == 21, ids

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for a in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
        ):
            options.add_argument(a)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        driver.get(f"{url}/login")
        driver.find_element(By.ID, "name").send_keys("bench")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "signin").click()
        window = f"&window_s={args.window_s}" if args.window_s != 60 else ""
        driver.get(f"{url}/timeline?series={urllib.parse.quote(','.join(ids))}{window}")
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script("return window.__ef && window.__ef.draws > 5")
        )
        width = driver.execute_script("return document.getElementById('chart').clientWidth")

        sse = {"bytes": 0, "events": 0}
        stream = f"{url}/api/live/stream?" + urllib.parse.urlencode(
            {"series": ",".join(ids), "window_s": args.window_s, "width": width}
        )
        for i in range(args.viewers - 1):
            mine = sse if i == 0 else {"bytes": 0, "events": 0}
            t = threading.Thread(target=sse_viewer, args=(stream, cookie, stop, mine), daemon=True)
            t.start()
            viewers.append(t)
        time.sleep(5)  # warm-up: every viewer has its first whole window

        proc = psutil.Process(console.pid)
        proc.cpu_percent(None)
        before = driver.execute_script(
            "return {f: __ef.frames, d: __ef.draws, n: __ef.drawn.length}"
        )
        b0, r0, t0 = sse["bytes"], counts["readings"], time.perf_counter()
        time.sleep(args.seconds)
        elapsed = time.perf_counter() - t0
        cpu = proc.cpu_percent(None)
        after = driver.execute_script(
            "return {f: __ef.frames, d: __ef.draws, n: __ef.drawn.length}"
        )
        drawn = driver.execute_script("return __ef.drawn")
        bytes_s = (sse["bytes"] - b0) / elapsed
        readings_s = (counts["readings"] - r0) / elapsed
        lat = [
            at - t_ns / 1e6 for sid, t_ns, at in drawn[-(after["n"] - before["n"]) :] if sid == fast
        ]
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    finally:
        stop.set()
        if driver is not None:
            driver.quit()
        console.terminate()
        console.wait(15)
        if loop_thread.is_alive():
            loop_thread.join(10)
        broker.stop()

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    raw_p50, raw_p99 = pct(raw, 50), pct(raw, 99)
    print(f"published           {readings_s:,.0f} readings/s (1 kHz signal + 20 series at 10 Hz)")
    print(
        f"viewers             {args.viewers} (1 Chromium, {args.viewers - 1} SSE clients), "
        f"window {args.window_s} s, {width} px"
    )
    print(f"console CPU         {cpu:.1f} % of one core")
    print(
        f"browser             {(after['f'] - before['f']) / elapsed:.1f} frames/s, "
        f"{(after['d'] - before['d']) / elapsed:.1f} chart draws/s, {len(errors)} console errors"
    )
    print(
        f"one viewer receives {bytes_s / 1e3:,.1f} kB/s of SSE "
        f"({bytes_s / max(readings_s, 1):.2f} B per published reading)"
    )
    print(
        f"publish → drawn     p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms "
        f"({len(lat)} draws of the 1 kHz signal)"
    )
    print(
        f"raw limit           publish → MQTT subscriber p50 {raw_p50:.2f} ms, p99 {raw_p99:.2f} ms "
        f"(drawn / raw: p50 ×{pct(lat, 50) / raw_p50:.0f}, p99 ×{pct(lat, 99) / raw_p99:.0f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
