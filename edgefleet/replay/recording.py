"""The raw recording: reading batches exactly as they travelled, in one Parquet file.

Why Parquet (through pyarrow): columnar and compressed (a recording of 8 signals at 10 Hz takes
a few bytes per reading), read in one call by the tools a data scientist already has (pandas,
polars, DuckDB, Spark), and written in row groups as data comes, so a recording cut short keeps
every row group written before the cut.

One row per reading, in arrival order:

| column | type | meaning |
|---|---|---|
| `batch` | int64 | the reading batch it came in (one message on `raw/{source}`), counting from 0 |
| `arrival_ns` | int64 | local clock at the batch's arrival (the aligner's lateness rule uses it) |
| `source` | string (dictionary) | the batch's source id |
| `signal` | string (dictionary) | the signal's name within its source |
| `t_ns` | int64 | the reading's own time (the device's clock where the protocol gives one) |
| `value` | float64 | NaN for bad readings |
| `quality` | uint8 | 0 good, 1 uncertain, 2 bad |

The file's metadata (`edgefleet.recording`, JSON) says the format version, the site, the flow
and topics recorded, and the labelled intervals (`[start_ns, end_ns, kind]`) when labels were
given (the simulator's labels CSV, or a label column of a converted CSV).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.errors import ConfigError
from shared.messages import ReadingBatch

META_KEY = b"edgefleet.recording"
FORMAT = 1
SCHEMA = pa.schema(
    [
        ("batch", pa.int64()),
        ("arrival_ns", pa.int64()),
        ("source", pa.dictionary(pa.int32(), pa.string())),
        ("signal", pa.dictionary(pa.int32(), pa.string())),
        ("t_ns", pa.int64()),
        ("value", pa.float64()),
        ("quality", pa.uint8()),
    ]
)
ROW_GROUP = 65_536


@dataclass
class Meta:
    site: str = ""
    flow: str | None = None
    topics: list[str] = field(default_factory=list)
    labels: list[tuple[int, int, str]] = field(default_factory=list)

    def to_json(self) -> bytes:
        body = {"format": FORMAT, **self.__dict__, "labels": [list(x) for x in self.labels]}
        return json.dumps(body).encode()

    @classmethod
    def from_json(cls, data: bytes, origin: str) -> Meta:
        body = json.loads(data)
        if body.get("format") != FORMAT:
            raise ConfigError(f"{origin}: recording format {body.get('format')!r}, not {FORMAT}")
        labels = [(int(a), int(b), str(k)) for a, b, k in body.get("labels", [])]
        return cls(body.get("site", ""), body.get("flow"), list(body.get("topics", [])), labels)


class RecordingWriter:
    """Appends reading batches; row groups are written every `ROW_GROUP` readings and at close.

    The file's metadata is written with its footer, at `close()`: the labels may still change
    while recording (the simulator rewrites its labels file when a fault starts)."""

    def __init__(self, path: Path, meta: Meta) -> None:
        self.path, self.meta = path, meta
        self._writer: pq.ParquetWriter | None = None
        self._cols: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
        self._pending = 0
        self.batches = 0
        self.readings = 0

    def add(self, batch: ReadingBatch, arrival_ns: int) -> None:
        n = len(batch)
        c = self._cols
        c["batch"].append(np.full(n, self.batches, np.int64))
        c["arrival_ns"].append(np.full(n, arrival_ns, np.int64))
        c["source"].append(np.full(n, batch.source, object))
        c["signal"].append(np.asarray(batch.signals, object)[batch.sig])
        c["t_ns"].append(batch.t)
        c["value"].append(batch.value)
        c["quality"].append(batch.q)
        self.batches += 1
        self.readings += n
        self._pending += n
        if self._pending >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        arrays = [
            pa.array(np.concatenate(self._cols[f.name]), type=f.type)
            if not pa.types.is_dictionary(f.type)
            else pa.array(np.concatenate(self._cols[f.name]), pa.string()).dictionary_encode()
            for f in SCHEMA
        ]
        table = pa.Table.from_arrays(arrays, schema=SCHEMA)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        self._writer.write_table(table)
        self._cols = {name: [] for name in SCHEMA.names}
        self._pending = 0

    def close(self) -> None:
        self.flush()
        if self._writer is None:  # nothing recorded: still a valid, empty recording
            self._writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        self._writer.add_key_value_metadata({META_KEY: self.meta.to_json()})
        self._writer.close()


@dataclass
class Recording:
    """A recording read back whole: columns as numpy arrays, batch boundaries found once."""

    meta: Meta
    batch: np.ndarray[Any, Any]
    arrival_ns: np.ndarray[Any, Any]
    source: np.ndarray[Any, Any]  # object array of source ids
    signal: np.ndarray[Any, Any]
    t_ns: np.ndarray[Any, Any]
    value: np.ndarray[Any, Any]
    quality: np.ndarray[Any, Any]

    def __len__(self) -> int:
        return int(self.t_ns.shape[0])

    @property
    def span_ns(self) -> tuple[int, int] | None:
        if not len(self):
            return None
        return int(self.t_ns.min()), int(self.t_ns.max())

    def batches(self) -> Iterator[tuple[int, ReadingBatch]]:
        """(arrival time, batch) in arrival order, as the aligner received them."""
        if not len(self):
            return
        starts = np.flatnonzero(np.diff(self.batch, prepend=self.batch[0] - 1))
        ends = np.append(starts[1:], len(self))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            names, sig = np.unique(self.signal[a:b], return_inverse=True)
            yield (
                int(self.arrival_ns[a]),
                ReadingBatch(
                    str(self.source[a]),
                    [str(n) for n in names],
                    self.t_ns[a:b],
                    sig.astype(np.uint16),
                    self.value[a:b],
                    self.quality[a:b],
                ),
            )


def read_recording(path: Path) -> Recording:
    try:
        table = pq.read_table(path)
        footer = pq.read_metadata(path).metadata or {}  # key-value metadata of the file
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"{path}: not a recording: {exc}") from None
    raw_meta = footer.get(META_KEY)
    if raw_meta is None:
        raise ConfigError(f"{path}: a Parquet file, but not an edgefleet recording (no metadata)")
    missing = [n for n in SCHEMA.names if n not in table.column_names]
    if missing:
        raise ConfigError(f"{path}: recording lacks columns {missing}")

    def col(name: str) -> np.ndarray[Any, Any]:
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(pa.string())
        return np.asarray(column.to_numpy(zero_copy_only=False))

    return Recording(
        Meta.from_json(raw_meta, str(path)),
        col("batch").astype(np.int64),
        col("arrival_ns").astype(np.int64),
        col("source"),
        col("signal"),
        col("t_ns").astype(np.int64),
        col("value").astype(np.float64),
        col("quality").astype(np.uint8),
    )
