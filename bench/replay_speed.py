"""Replay speed: a recording of the demo's shape (8 signals, a 100 ms flow) replayed through the
aligner and inference code, in samples/s and in multiples of real time, against the aligner
engine alone on the same recording in the same run (the limit: replay adds inference and
reading the file).

    PYTHONPATH=. .venv/bin/python bench/replay_speed.py [--minutes 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from edgefleet.flow import load_flow
from edgefleet.replay.recording import Meta, RecordingWriter, read_recording
from edgefleet.replay.run import replay
from services.aligner.alignment import Aligner
from shared.messages import ReadingBatch
from tests.inference import models

SIGNALS = ["suction", "discharge", "flow", "speed", "temp_bearing", "temp_fluid", "current"]


def make_recording(path: Path, minutes: float) -> None:
    """A Modbus-like source polled every 100 ms (7 signals) and a 1 kHz vibration source in
    messages of 100 readings."""
    rng = np.random.default_rng(0)
    writer = RecordingWriter(path, Meta(site="bench", flow="pump"))
    t0 = 1_767_225_600_000_000_000
    for i in range(int(minutes * 600)):
        now = t0 + i * 100_000_000
        plc = ReadingBatch.from_columns(
            "plc1", SIGNALS, np.full(7, now), np.arange(7), rng.normal(size=7)
        )
        writer.add(plc, now + 2_000_000)
        vib = ReadingBatch.from_columns(
            "vib",
            ["x"],
            now - np.arange(100)[::-1] * 1_000_000,
            np.zeros(100),
            rng.normal(size=100),
        )
        writer.add(vib, now + 1_000_000)
    writer.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=30.0, help="real time recorded")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rec_path = folder / "rec.parquet"
        make_recording(rec_path, args.minutes)
        features = [{"signal": f"plc1/{s}", "fill": "hold", "max_age_ms": 1000} for s in SIGNALS]
        features.append({"signal": "vib/x", "agg": "rms"})
        models.mlp(folder / "m.onnx", f=len(features))
        flow_doc = {
            "name": "pump",
            "align": {"period_ms": 100, "max_delay_ms": 250, "features": features},
            "model": {"path": "m.onnx"},
        }
        (folder / "flow.yaml").write_text(yaml.safe_dump(flow_doc))
        flow = load_flow(folder / "flow.yaml")

        start = time.perf_counter()
        rec = read_recording(rec_path)
        read_s = time.perf_counter() - start

        start = time.perf_counter()
        aligner, samples = Aligner(flow.name, flow.align), 0
        for arrival, batch in rec.batches():
            aligner.ingest(batch, arrival)
            while (s := aligner.emit(arrival)) is not None:
                samples += len(s)
        engine_s = time.perf_counter() - start

        result = replay(rec, flow)
        real_s = args.minutes * 60
        print(f"recording: {args.minutes:g} min, {len(rec):,} readings, read in {read_s:.2f} s")
        rate, times = samples / engine_s, real_s / engine_s
        print(f"  aligner engine alone   {rate:10,.0f} samples/s {times:7,.0f}× real time")
        rate, times = result.sample_count / result.seconds, real_s / result.seconds
        ratio = engine_s / result.seconds
        print(
            f"  replay (align + infer) {rate:10,.0f} samples/s {times:7,.0f}× real time "
            f"({ratio:.2f}× the engine alone)"
        )


if __name__ == "__main__":
    main()
