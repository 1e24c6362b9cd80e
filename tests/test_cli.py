"""The `edgefleet` command as a user runs it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgefleet.broker import LocalBroker
from tests.helpers import Probe

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


def test_check_accepts_a_good_config_and_names_the_bad_key(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "site: plant1\ninstance: ingest1\ninputs:\n"
        "  - {topic: a/#, source: gw, signals: [{name: v, path: v}]}\n"
    )
    ok = subprocess.run(
        [*EDGEFLEET, "run", "mqtt-ingest", "--config", str(good), "--check"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "valid mqtt-ingest config" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("source: gw", "source: gw, sorce: x"))
    out = subprocess.run(
        [*EDGEFLEET, "run", "mqtt-ingest", "--config", str(bad), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert f"{bad}:4: inputs.0.sorce: unknown key" in out.stderr


def test_run_refuses_an_unknown_service(tmp_path: Path) -> None:
    out = subprocess.run(
        [*EDGEFLEET, "run", "toaster", "--config", "x.yaml"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "unknown service 'toaster'" in out.stderr


async def test_tap_decodes_both_encodings(broker: LocalBroker) -> None:
    async with Probe(broker.host, broker.port) as probe:  # retained: tap's first line on subscribe
        await probe.publish_raw("demo/ready", b"ready", qos=1, retain=True)
    tap = await asyncio.create_subprocess_exec(
        *EDGEFLEET,
        "tap",
        "demo/#",
        "--port",
        str(broker.port),
        "--count",
        "4",
        "--timeout",
        "20",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with Probe(broker.host, broker.port) as probe:
            assert tap.stdout is not None
            first = await asyncio.wait_for(tap.stdout.readline(), 20)  # tap has subscribed
            assert json.loads(first)["topic"] == "demo/ready"
            await probe.publish("demo/a", {"x": np.array([1.5, np.nan], np.float32)}, qos=1)
            await probe.publish("demo/b", {"y": 2}, "json", qos=1)
            await probe.publish_raw("demo/c", b"plain text", qos=1)
        stdout, _ = await asyncio.wait_for(tap.communicate(), 20)
    finally:
        if tap.returncode is None:
            tap.kill()
            await tap.wait()
    lines = [json.loads(first), *(json.loads(line) for line in stdout.decode().splitlines())]
    by_topic = {line["topic"]: line for line in lines}
    assert by_topic["demo/a"]["content_type"] == "application/msgpack"
    assert by_topic["demo/a"]["payload"] == {"x": [1.5, None]}
    assert by_topic["demo/b"]["content_type"] == "application/json"
    assert by_topic["demo/b"]["payload"] == {"y": 2}
    assert by_topic["demo/c"]["text"] == "plain text"
    assert all(line["received"].endswith("+00:00") for line in lines)
