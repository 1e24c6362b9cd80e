"""Aligner engine throughput on one core, no broker: readings/s through ingest + emit.

64 signals on 8 sources, each source with two signals at each of 1 kHz, 100 Hz, 10 Hz and
0.2 Hz; every source sends one batch per `--batch-ms` of simulated time (one adapter poll), with
jittered device timestamps. Fast signals are aggregated, slow ones held or interpolated. Batches
are built before the clock starts; the timed loop is what the service does per message.

    PYTHONPATH=. python bench/aligner_inprocess.py [--seconds 120] [--period-ms 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from services.aligner.alignment import Aligner
from services.aligner.config import AlignSpec
from shared.messages import ReadingBatch

MS = 1_000_000
RATES_HZ = (1000.0, 100.0, 10.0, 0.2)
T0 = 1_700_000_000 * 1_000_000_000


def make_spec(period_ms: float, window: int) -> AlignSpec:
    features: list[dict[str, object]] = []
    for src in range(8):
        for r, rate in enumerate(RATES_HZ):
            for j in range(2):
                sig = f"s{src}/r{r}_{j}"
                if rate >= 100:
                    features.append({"signal": sig, "agg": ("rms", "mean")[j]})
                elif rate >= 10:
                    features.append(
                        {"signal": sig, "fill": ("linear", "hold")[j], "max_age_ms": 500}
                    )
                else:
                    features.append({"signal": sig, "fill": "hold", "max_age_ms": 12_000})
    return AlignSpec.model_validate(
        {
            "period_ms": period_ms,
            "max_delay_ms": 250,
            "window": window,
            "on_missing": "nan",
            "features": features,
        }
    )


def make_batches(
    seconds: float, batch_ms: float, seed: int = 1, t0: int = T0
) -> list[ReadingBatch]:
    rng = np.random.default_rng(seed)
    names = [f"r{r}_{j}" for r in range(len(RATES_HZ)) for j in range(2)]
    streams = []  # per source: (t, sig) sorted by time
    for _src in range(8):
        ts, sigs = [], []
        for i, name in enumerate(names):
            rate = RATES_HZ[int(name[1])]
            step = 1e9 / rate
            t = t0 + (np.arange(int(seconds * rate)) * step + rng.uniform(0, step / 4)).astype(
                np.int64
            )
            ts.append(t)
            sigs.append(np.full(t.shape[0], i, np.uint16))
        t_all, s_all = np.concatenate(ts), np.concatenate(sigs)
        order = np.argsort(t_all, kind="stable")
        streams.append((t_all[order], s_all[order]))
    batches = []
    step = int(batch_ms * MS)
    for b in range(int(seconds * 1000 / batch_ms)):
        lo_t, hi_t = t0 + b * step, t0 + (b + 1) * step
        for src, (t, s) in enumerate(streams):
            lo, hi = np.searchsorted(t, [lo_t, hi_t])
            v = np.sin(t[lo:hi] / 1e8) + rng.normal(0, 0.01, hi - lo)
            batches.append(
                ReadingBatch.from_columns(
                    f"s{src}", names, t[lo:hi], s[lo:hi], v, received_ns=int(hi_t)
                )
            )
    return batches


def run(spec: AlignSpec, batches: list[ReadingBatch]) -> tuple[float, int, int]:
    aligner = Aligner("bench", spec)
    readings = samples = 0
    start = time.perf_counter()
    for batch in batches:
        now = batch.received_ns or 0
        aligner.ingest(batch, now)
        readings += len(batch)
        out = aligner.emit(now)
        if out is not None:
            samples += len(out)
    return time.perf_counter() - start, readings, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="simulated time")
    ap.add_argument("--batch-ms", type=float, default=100.0, help="one batch per source per ...")
    ap.add_argument("--period-ms", type=float, nargs="*", default=[100.0, 10.0])
    ap.add_argument("--window", type=int, default=1)
    args = ap.parse_args()
    batches = make_batches(args.seconds, args.batch_ms)
    total = sum(len(b) for b in batches)
    print(
        f"{len(batches)} batches, {total} readings, "
        f"{total / len(batches):.0f} readings per batch, 64 signals, 8 sources"
    )
    for period in args.period_ms:
        spec = make_spec(period, args.window)
        run(spec, batches[: len(batches) // 10])  # warm-up
        best = min((run(spec, batches) for _ in range(3)), key=lambda r: r[0])
        secs, readings, samples = best
        print(
            f"period {period:g} ms, window {args.window}: {readings / secs / 1e6:.2f} M "
            f"readings/s, {samples / secs:,.0f} samples/s, "
            f"{secs / len(batches) * 1e6:.1f} µs per batch (ingest + emit), "
            f"{samples} samples"
        )


if __name__ == "__main__":
    main()
