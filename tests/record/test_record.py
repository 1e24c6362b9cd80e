"""`edgefleet record` against a real mosquitto: the rows it writes are the samples a real aligner
service publishes for the same readings, and the labels CSV gives each row its label."""

from __future__ import annotations

import asyncio
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgefleet.broker import LocalBroker
from edgefleet.record import Labels
from services.aligner.config import AlignerConfig
from services.aligner.service import main
from shared.config import validate
from shared.messages import FeatureState, ReadingBatch, SampleBatch, now_ns
from shared.topics import Topics
from tests.helpers import Probe, running, until

MS = 1_000_000
FLOW = {
    "name": "pump",
    "align": {
        "period_ms": 100,
        "max_delay_ms": 300,
        "on_missing": "nan",
        "features": [
            {"signal": "plc/pressure", "fill": "linear", "max_age_ms": 300},
            {"signal": "plc/temp", "fill": "hold", "max_age_ms": 2000},
            {"signal": "vib/x", "agg": "rms"},
            {"signal": "vib/x", "agg": "max", "name": "vib_peak"},
        ],
    },
}
STATES = [s.name.lower() for s in FeatureState]


async def feed(probe: Probe, topics: Topics, seconds: float) -> int:
    """Adapter-shaped batches in real time: the PLC every 100 ms (temp every 1 s, one gap),
    the vibration sensor at 1 kHz in 50 ms batches. Returns the last reading time."""
    rng = np.random.default_rng(7)
    start = now_ns() // (50 * MS) * (50 * MS)
    last = start
    for step in range(int(seconds * 20)):
        t0 = start + step * 50 * MS
        vt = t0 + np.arange(50, dtype=np.int64) * MS
        vib = ReadingBatch.from_columns(
            "vib", ["x"], vt, np.zeros(50), rng.normal(0, 1 + step / 40, 50)
        )
        await probe.publish(topics.raw("vib"), vib.to_wire())
        if step % 2 == 0 and not 30 <= step < 40:  # a 0.5 s PLC outage: held, then missing
            names, sig, val = ["pressure", "temp"], [0], [4.0 + 0.1 * np.sin(step / 5)]
            if step % 20 == 0:
                sig.append(1)
                val.append(45.0 + step / 100)
            plc = ReadingBatch.from_columns("plc", names, [t0 + 30 * MS] * len(sig), sig, val)
            await probe.publish(topics.raw("plc"), plc.to_wire())
        last = int(vt[-1])
        await asyncio.sleep(max(0.0, (t0 + 50 * MS - now_ns()) / 1e9))  # the scenario: real time
    return last


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


async def test_recording_equals_what_the_aligner_service_publishes(
    broker: LocalBroker, base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    topics = Topics(site)
    flow_file = tmp_path / "pump.yaml"
    flow_file.write_text(yaml.safe_dump(FLOW))
    labels = tmp_path / "labels.csv"
    out = tmp_path / "rec" / "pump.csv"
    await probe.subscribe(topics.everything())
    cfg = validate(AlignerConfig, {**base_config, "instance": "aligner-pump", "flow": FLOW}, "t")
    recorder = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet.cli", "record", str(flow_file),
        "--out", str(out), "--broker", f"{broker.host}:{broker.port}",
        "--site", site, "--labels", str(labels),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with running(main(cfg)):
            for instance in ("aligner-pump", "record-pump"):
                await probe.wait_for(
                    topics.status(instance), lambda s: s["state"] == "online", timeout=20
                )
            start = now_ns()
            fault = (start + 1200 * MS, start + 1800 * MS)
            labels.write_text(
                f"start,end,start_ns,end_ns,kind\nx,y,{fault[0]},{fault[1]},cavitation\n"
            )
            last = await feed(probe, topics, 3.0)
            [final] = await probe.wait_for(
                topics.samples("pump"), lambda d: int(d["t"][-1]) >= last // (100 * MS) * 100 * MS
            )
            # the recorder decides the same samples at the same moments: wait for its row
            needle = f",{int(final['t'][-1])},"
            await until(lambda: out.exists() and needle in out.read_text())
    finally:
        recorder.terminate()
        _, stderr = await asyncio.wait_for(recorder.communicate(), 20)
    err = stderr.decode()
    assert recorder.returncode == 0, err
    assert "samples from" in err

    got = [SampleBatch.from_wire(d) for d in probe.decoded(topics.samples("pump"))]
    t = np.concatenate([g.t for g in got])
    x = np.concatenate([g.x for g in got])
    state = np.concatenate([g.state for g in got])
    rows = read_rows(out)
    by_t = {int(r["t_ns"]): r for r in rows}
    features = ["plc/pressure", "plc/temp", "vib/x:rms", "vib_peak"]
    assert list(rows[0])[:6] == ["time", "t_ns", *features]
    assert len(t) >= 25 and set(t.tolist()) <= set(by_t), "every published sample is recorded"
    assert sorted(by_t) == t.tolist(), "and nothing else"
    for i, ti in enumerate(t.tolist()):
        row = by_t[ti]
        rec_x = np.array([float(row[f]) for f in features], np.float32)
        np.testing.assert_array_equal(rec_x, x[i], err_msg=f"values at {ti}")
        assert [row[f"{f}.state"] for f in features] == [STATES[s] for s in state[i]], ti
    assert {"held", "interpolated", "missing", "observed"} <= {
        r[f"{f}.state"] for r in rows for f in features
    }
    tagged = {int(r["t_ns"]): r["label"] for r in rows}
    assert {tagged[k] for k in tagged if fault[0] <= k < fault[1]} == {"cavitation"}
    assert {tagged[k] for k in tagged if not fault[0] <= k < fault[1]} == {"normal"}


def test_labels_join_overlapping_faults_and_wait_for_the_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    labels = Labels(path)
    t = np.array([0, 10, 20, 30], np.int64)
    assert labels.at(t) == ["normal"] * 4
    path.write_text("start_ns,end_ns,kind\n10,30,cavitation\n20,40,bearing_wear\n")
    assert labels.at(t) == ["normal", "cavitation", "bearing_wear+cavitation", "bearing_wear"]
