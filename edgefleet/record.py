"""`edgefleet record`: a flow's aligned samples to a file, for training.

The samples come from the aligner service's own code (`AlignerService`: its raw handler, its
emit loop, its `Aligner` engine) fed from the flow's raw topics on the site broker; only the
publish step is replaced by a write. A model trained on a recording therefore sees exactly what
the site will serve it: the same grid times, values, fill rules and states.

One row per sample time: `time` (ISO-8601 UTC), `t_ns`, one column per feature (the model's
input order), `{feature}.state` (observed, held, interpolated, missing, default) and
`{feature}.age_ms` (age of the value used), then `label` when a labels CSV is given (the fault
kinds active at that time, `+`-joined, else `normal`). Flows with windows (W > 1) are recorded
sample by sample: a window is W consecutive rows. CSV is written as samples come; a `.parquet`
output needs pyarrow and is written at the end.
"""

from __future__ import annotations

import asyncio
import csv
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from edgefleet.flow import FlowSpec
from services.aligner.config import AlignerConfig
from services.aligner.service import AlignerService
from shared.config import BrokerConfig, validate
from shared.errors import ConfigError
from shared.messages import FeatureState, SampleBatch, iso
from shared.runtime import Runtime

log = logging.getLogger(__name__)
NAME = "record"
STATE_NAMES = [s.name.lower() for s in FeatureState]
NORMAL = "normal"


def columns(features: list[str], labelled: bool) -> list[str]:
    cols = ["time", "t_ns", *features]
    cols += [f"{f}.state" for f in features] + [f"{f}.age_ms" for f in features]
    return cols + (["label"] if labelled else [])


class Labels:
    """Fault intervals from a labels CSV (`start_ns,end_ns,kind`, as `edgefleet sim
    --labels-out` writes it). The file is read again when it changes: the simulator rewrites
    it when a fault is injected while it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._start = np.empty(0, np.int64)
        self._end = np.empty(0, np.int64)
        self._kind: list[str] = []

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return  # not written yet: every row is normal until it is
        if (st.st_mtime, st.st_size) == self._stamp:
            return
        self._stamp = (st.st_mtime, st.st_size)
        with self.path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        try:
            self._start = np.array([int(r["start_ns"]) for r in rows], np.int64)
            self._end = np.array([int(r["end_ns"]) for r in rows], np.int64)
            self._kind = [r["kind"] for r in rows]
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"{self.path}: a labels CSV needs columns start_ns, end_ns, kind ({exc})"
            ) from None

    def at(self, t: np.ndarray[Any, Any]) -> list[str]:
        """The label of each time: active kinds joined by '+', or 'normal'."""
        self._refresh()
        if not self._kind:
            return [NORMAL] * t.shape[0]
        active = (t[:, None] >= self._start[None, :]) & (t[:, None] < self._end[None, :])
        return [
            "+".join(sorted({self._kind[j] for j in np.flatnonzero(row)})) or NORMAL
            for row in active
        ]


class Sink(Protocol):
    def write(self, rows: list[list[Any]]) -> None: ...
    def close(self) -> None: ...


class CsvSink:
    def __init__(self, path: Path, header: list[str]) -> None:
        self._fh = path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        self._writer.writerow(header)

    def write(self, rows: list[list[Any]]) -> None:
        self._writer.writerows(rows)
        self._fh.flush()  # a recording cut short by a crash keeps what it had

    def close(self) -> None:
        self._fh.close()


class ParquetSink:
    """Collects rows and writes one Parquet file at the end (pyarrow, when installed)."""

    def __init__(self, path: Path, header: list[str]) -> None:
        try:
            self._pa = importlib.import_module("pyarrow")
            self._pq = importlib.import_module("pyarrow.parquet")
        except ImportError:
            raise ConfigError(
                f"{path}: Parquet output needs pyarrow, which is not installed; "
                "write a .csv file instead"
            ) from None
        self.path, self.header = path, header
        self.rows: list[list[Any]] = []

    def write(self, rows: list[list[Any]]) -> None:
        self.rows.extend(rows)

    def close(self) -> None:
        cols = {h: [r[i] for r in self.rows] for i, h in enumerate(self.header)}
        self._pq.write_table(self._pa.table(cols), self.path)


def open_sink(path: Path, header: list[str]) -> Sink:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        return ParquetSink(path, header)
    return CsvSink(path, header)


def rows_of(samples: SampleBatch, labels: Labels | None) -> list[list[Any]]:
    """One row per sample time; a window batch [N, W, F] gives its newest sample per row."""
    x, state, age = samples.x, samples.state, samples.age_ms
    if x.ndim == 3:
        x, state, age = x[:, -1], state[:, -1], age[:, -1]
    t = samples.t
    tags = labels.at(t) if labels is not None else None
    rows = []
    for i in range(t.shape[0]):
        row: list[Any] = [iso(int(t[i])), int(t[i])]
        row += [str(v) for v in x[i]]  # numpy's shortest repr: exact float32 on reading back
        row += [STATE_NAMES[s] for s in state[i].tolist()]
        row += [str(a) for a in age[i]]
        if tags is not None:
            row.append(tags[i])
        rows.append(row)
    return rows


class Recorder(AlignerService):
    """The aligner service with its publish step replaced by a write to `sink`."""

    def __init__(
        self,
        rt: Runtime,
        config: AlignerConfig,
        flow: FlowSpec,
        sink: Sink,
        labels: Labels | None,
        on_rows: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(rt, config, flow)
        self.sink, self.labels, self.on_rows = sink, labels, on_rows
        self.rows = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    async def publish_due(self, now: int) -> int:
        written = 0
        while True:
            before = self.engine.emitted_until_ns
            samples = self.engine.emit(now)
            if samples is not None and len(samples):
                self.sink.write(rows_of(samples, self.labels))
                written += len(samples)
                if self.first_ns is None:
                    self.first_ns = int(samples.t[0])
                self.last_ns = int(samples.t[-1])
            if self.engine.emitted_until_ns == before:
                self.rows += written
                self.published_samples += written
                if written and self.on_rows is not None:
                    self.on_rows(self.rows)
                return written


def recording_flow(flow: FlowSpec) -> FlowSpec:
    """The flow as recorded: one row per sample (windows are made from consecutive rows)."""
    if flow.align.window == 1 and flow.align.stride == 1:
        return flow
    align = flow.align.model_copy(update={"window": 1, "stride": 1})
    return flow.model_copy(update={"align": align})


@dataclass
class Recording:
    path: Path
    rows: int
    first_ns: int | None
    last_ns: int | None
    readings: int


async def record(
    flow: FlowSpec,
    out: Path,
    *,
    site: str,
    host: str = "127.0.0.1",
    port: int = 1883,
    duration_s: float | None = None,
    labels: Path | None = None,
    stop: asyncio.Event | None = None,
    on_rows: Callable[[int], None] | None = None,
    quiet_warn_s: float = 10.0,
    handle_signals: bool = True,
) -> Recording:
    """Record until `duration_s` passes, `stop` is set, or SIGINT/SIGTERM (unless
    `handle_signals` is False: a caller that owns the signals, as the fleet demo)."""
    flow = recording_flow(flow)
    config = validate(
        AlignerConfig,
        {
            "site": site,
            "instance": f"record-{flow.name}",
            "broker": {"host": host, "port": port},
            "timings": {"reconnect_max_s": 2.0},
            # Only what the aligner reads: model, actions and sinks play no part in a recording.
            "flow": {"name": flow.name, "align": flow.align.model_dump(exclude_none=True)},
        },
        "record",
    )
    tags = Labels(labels) if labels is not None else None
    sink = open_sink(out, columns(flow.align.labels, tags is not None))
    try:
        rt = Runtime(NAME, config)
        recorder = Recorder(rt, config, flow, sink, tags, on_rows)
        await recorder.start()

        async def until_done() -> None:
            waiters: list[asyncio.Task[Any]] = [
                asyncio.create_task(asyncio.sleep(duration_s or 1e12))
            ]
            if stop is not None:
                waiters.append(asyncio.create_task(stop.wait()))
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            rt.stop.set()

        async def warn_when_quiet() -> None:
            await asyncio.sleep(quiet_warn_s)
            if recorder.engine.stats.readings == 0:
                raw = ", ".join(rt.topics.raw(s) for s in flow.align.sources)
                log.warning(
                    "no readings after %.0f s on %s: is the site running?", quiet_warn_s, raw
                )

        await rt.serve(
            {
                "emit_loop": recorder.emit_loop,
                "until_done_loop": until_done,
                "quiet_warning_loop": warn_when_quiet,
            },
            handle_signals=handle_signals,
        )
    finally:
        sink.close()
    return Recording(
        out, recorder.rows, recorder.first_ns, recorder.last_ns, recorder.engine.stats.readings
    )


def parse_broker(text: str) -> tuple[str, int]:
    """`host:port` (or `host`) as config files write a broker (`BrokerConfig`)."""
    try:
        broker = BrokerConfig.model_validate(text)
    except ValidationError:
        raise ConfigError(f"--broker must be host:port, got {text!r}") from None
    return broker.host, broker.port


def main(
    flow_file: Path,
    out: Path,
    broker: str,
    site: str,
    duration_s: float | None,
    labels: Path | None,
) -> int:
    from edgefleet.flow import load_flow

    flow = load_flow(flow_file)
    host, port = parse_broker(broker)

    def progress(rows: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{rows} samples recorded", end="", file=sys.stderr, flush=True)

    print(
        f"recording flow {flow.name} of site {site} from {host}:{port} to {out} "
        f"({', '.join(flow.align.labels)}); Ctrl-C stops",
        file=sys.stderr,
    )
    result = asyncio.run(
        record(
            flow,
            out,
            site=site,
            host=host,
            port=port,
            duration_s=duration_s,
            labels=labels,
            on_rows=progress,
        )
    )
    span = ""
    if result.first_ns is not None and result.last_ns is not None:
        span = f", {iso(result.first_ns)} to {iso(result.last_ns)}"
    print(
        f"\n{result.rows} samples from {result.readings} readings written to {out}{span}",
        file=sys.stderr,
    )
    return 0
