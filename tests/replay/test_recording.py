"""Recordings: batches come back exactly as they were written; CSV files of any dialect convert."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.replay.from_csv import convert
from edgefleet.replay.recording import Meta, RecordingWriter, read_recording
from shared.errors import ConfigError
from shared.messages import ReadingBatch


def batch(source: str, signals: list[str], t0: int, n: int) -> ReadingBatch:
    rng = np.random.default_rng(t0)
    return ReadingBatch.from_columns(
        source,
        signals,
        t0 + np.arange(n) * 1000,
        rng.integers(0, len(signals), n),
        rng.normal(size=n),
        rng.integers(0, 3, n),
    )


def test_batches_round_trip_with_arrival_and_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgefleet.replay.recording as recording

    monkeypatch.setattr(recording, "ROW_GROUP", 50)  # several row groups
    path = tmp_path / "rec.parquet"
    writer = RecordingWriter(path, Meta(site="plant1", flow="pump", topics=["ef/plant1/raw/+"]))
    written = [
        (10_000 + i, batch("plc1" if i % 3 else "vib", ["a", "b", "c"], i * 10**6, 7 + i))
        for i in range(30)
    ]
    for arrival, b in written:
        writer.add(b, arrival)
    writer.meta.labels = [(5, 9, "cavitation")]
    writer.close()

    rec = read_recording(path)
    assert rec.meta.site == "plant1" and rec.meta.flow == "pump"
    assert rec.meta.labels == [(5, 9, "cavitation")]
    back = list(rec.batches())
    assert len(back) == len(written)
    for (arrival, want), (got_arrival, got) in zip(written, back, strict=True):
        assert got_arrival == arrival and got.source == want.source
        names = [want.signals[i] for i in want.sig]
        assert [got.signals[i] for i in got.sig] == names
        np.testing.assert_array_equal(got.t, want.t)
        np.testing.assert_array_equal(got.value, want.value)
        np.testing.assert_array_equal(got.q, want.q)


def test_empty_recording_and_foreign_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    RecordingWriter(empty, Meta(site="s")).close()
    assert len(read_recording(empty)) == 0 and list(read_recording(empty).batches()) == []
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="not a recording"):
        read_recording(junk)


def test_csv_with_semicolons_decimal_commas_zones_and_labels(tmp_path: Path) -> None:
    csv_path = tmp_path / "plant.csv"
    csv_path.write_text(
        "Zeit;Druck;Temp;Zustand\n"
        "2026-03-01 10:00:00;1,5;20,25;normal\n"
        "2026-03-01 10:00:01;1.001,5;;normal\n"  # thousands separator; an empty cell
        "2026-03-01T10:00:02+02:00;2,5;x;cavitation\n"  # its own zone; an unreadable cell
        "2026-03-01 10:00:03;3,5;21;cavitation\n"
        "2026-03-01 10:00:04;4,5;22;normal\n",
        encoding="utf-8",
    )
    out = tmp_path / "rec.parquet"
    done = convert(
        csv_path, out, source="plc1", decimal=",", tz="Europe/Berlin", label_column="Zustand"
    )
    assert (done.rows, done.readings, done.bad) == (5, 10, 2)
    rec = read_recording(out)
    t0 = 1_772_355_600 * 10**9  # 2026-03-01T09:00:00Z = 10:00 in Berlin (UTC+1 in March)
    batches = list(rec.batches())
    assert [b.t[0] - t0 for _, b in batches] == [
        0,
        10**9,
        -3600 * 10**9 + 2 * 10**9,
        3 * 10**9,
        4 * 10**9,
    ]
    first = batches[0][1]
    assert dict(zip(first.signals, first.value[np.argsort(first.sig)], strict=True)) == {
        "Druck": 1.5,
        "Temp": 20.25,
    }
    second = batches[1][1]
    assert second.value[second.signals.index("Druck")] == 1001.5
    assert np.isnan(second.value[second.signals.index("Temp")])
    assert second.q[second.signals.index("Temp")] == 2
    # label runs: rows 3 and 4 are one interval
    assert rec.meta.labels == [(t0 - 3600 * 10**9 + 2 * 10**9, t0 + 3 * 10**9, "cavitation")]


@pytest.mark.parametrize(
    ("cell", "unit", "want_ns"),
    [
        ("1772359200", None, 1772359200 * 10**9),
        ("1772359200123", None, 1772359200123 * 10**6),
        ("1772359200.5", "s", 1772359200500 * 10**6),
        ("1772359200123456789", None, 1772359200123456789),
    ],
)
def test_epoch_times(tmp_path: Path, cell: str, unit: str | None, want_ns: int) -> None:
    csv_path = tmp_path / "e.csv"
    csv_path.write_text(f"ts,p\n{cell},1\n")
    out = tmp_path / "e.parquet"
    convert(csv_path, out, source="s", unit=unit)
    [(_, b)] = list(read_recording(out).batches())
    assert int(b.t[0]) == want_ns


def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("t,p\n2026-01-01T00:00:00Z,1\nyesterday,2\n")
    with pytest.raises(ConfigError, match=r"bad.csv:3: time 'yesterday'"):
        convert(bad, tmp_path / "o.parquet", source="s")
    with pytest.raises(ConfigError, match="no column 'when'"):
        convert(bad, tmp_path / "o.parquet", source="s", time_column="when")
