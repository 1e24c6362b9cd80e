"""`edgefleet replay` and `edgefleet recording`: trust a model before it acts.

    edgefleet replay REC.parquet --flow FLOW.yaml [--model CANDIDATE.onnx | --model NAME@N]
                     [--against LIVE.yaml | --against-model LIVE.onnx | NAME@N]
                     [--fleet HOST:PORT | mqtts://USER@HOST:PORT] [--prefix ef] [--cache DIR]
                     [--score FIELD] [--threshold X] [--out DIR] [--json]
    edgefleet recording from-csv DATA.csv --out REC.parquet --source NAME [--time COL]
                     [--unit s|ms|us|ns] [--tz ZONE] [--sep ;] [--decimal ,] [--label COL]
    edgefleet recording show REC.parquet [--json]

`replay` runs the site's aligner and inference code over the recording (as fast as it goes),
writes `samples-*.parquet`, `results-*.parquet`, `report.json` and `scores.png` to `--out`, and
prints a table: when each score crossed its threshold and, with labels, precision, recall and
the detection delay per labelled anomaly; with `--against`, how far the two agree. The threshold
is `--threshold`, else the model's `edgefleet.threshold`. Exit codes (edgefleet/cli_errors.py):
0 done, 1 the fleet refused (no such NAME@N), 2 bad usage, an unreadable file or a model that
does not fit the flow, 3 the fleet cannot be reached.

A model given as `NAME@N` (or a flow whose model is `{ref: NAME@N}`) is fetched from the fleet's
library (`--fleet`, else $EDGEFLEET_FLEET), cached by digest and verified (replay/library.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edgefleet.cli_errors import UsageError, cli_errors
from edgefleet.flow import FlowSpec, load_flow
from edgefleet.replay.compare import Scored, compare, render
from edgefleet.replay.from_csv import convert
from edgefleet.replay.library import fetch_model, is_ref, resolve_flow_model
from edgefleet.replay.plot import plot
from edgefleet.replay.recording import Recording, read_recording
from edgefleet.replay.run import Replayed, engine_for, replay
from services.inference.engine import Engine
from shared.errors import ConfigError
from shared.messages import iso
from shared.topics import DEFAULT_PREFIX


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet replay", description=__doc__.split("\n")[0])
    p.add_argument("recording", type=Path)
    p.add_argument("--flow", type=Path, required=True, help="the (candidate) flow file")
    p.add_argument(
        "--model", "--ref", help="run this model (a file, or NAME@N from the fleet) instead"
    )
    p.add_argument("--against", type=Path, help="a second flow file to compare with")
    p.add_argument(
        "--against-model", help="the same flow with this model (a file or NAME@N), compared"
    )
    p.add_argument(
        "--fleet",
        help="the fleet's broker, for NAME@N models: host:port or mqtt[s]://[user@]host[:port] "
        "(TLS files and password from $EDGEFLEET_FLEET_CA, _CERT, _KEY, _PASSWORD)",
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="the fleet's topic prefix (ef)")
    p.add_argument("--cache", type=Path, help="model cache (default: ~/.cache/edgefleet/models)")
    p.add_argument("--score", help="the result field compared (default: score, else the first)")
    p.add_argument("--threshold", type=float, help="default: the model's edgefleet.threshold")
    p.add_argument(
        "--grace-s", type=float, default=0.0, help="detection counted this long after a label ends"
    )
    p.add_argument("--out", type=Path, default=Path("var/replay"), help="where files go")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def with_model(flow: FlowSpec, model: str, args: argparse.Namespace) -> FlowSpec:
    """The flow with `model` (a file, or a library NAME@N fetched and verified) as its model."""
    if flow.model is None:
        raise ConfigError(f"flow {flow.name!r} has no model to replace")
    if is_ref(model):
        path = fetch_model(model, args.fleet, args.prefix, args.cache)
        name, _, version = model.partition("@")
        keys: dict[str, Any] = {"path": path, "ref": None, "name": name, "version": version}
    else:
        keys = {"path": Path(model).resolve(), "ref": None, "name": Path(model).stem}
    return flow.model_copy(update={"model": flow.model.model_copy(update=keys)})


def _load(path: Path, args: argparse.Namespace) -> FlowSpec:
    return resolve_flow_model(load_flow(path), args.fleet, args.prefix, args.cache)


def model_name(flow: FlowSpec) -> str:
    m = flow.model
    if m is None:
        return flow.name
    name = m.name or (m.path.stem if m.path else None) or m.ref or flow.name
    return f"{name}@{m.version}" if m.version and "@" not in name else name


def scored(
    name: str, run: Replayed, engine: Engine, field: str | None, thr: float | None
) -> Scored:
    cols = run.result_columns()
    fields = [k for k, v in cols.items() if k != "t_ns" and v.dtype.kind == "f"]
    pick = field or ("score" if "score" in fields else (fields[0] if fields else None))
    if pick is None or pick not in cols:
        raise ConfigError(
            f"{name}: no result field {field or 'with a float score'}; has {list(cols)}"
        )
    threshold = thr
    if threshold is None:
        meta = engine.model.metadata.get("edgefleet.threshold")
        if meta is None:
            raise ConfigError(f"{name}: the model has no edgefleet.threshold; give --threshold")
        threshold = float(json.loads(meta))
    return Scored(name, cols["t_ns"], np.asarray(cols[pick], np.float64), threshold)


def write_parquet(path: Path, columns: dict[str, np.ndarray[Any, Any]]) -> None:
    table = pa.table({k: (v if v.ndim == 1 else list(v)) for k, v in columns.items()})
    pq.write_table(table, path, compression="zstd")


def sample_columns(run: Replayed) -> dict[str, np.ndarray[Any, Any]]:
    if not run.samples:
        return {"t_ns": np.empty(0, np.int64)}
    first = run.samples[0]
    t = np.concatenate([s.t for s in run.samples])
    x = np.concatenate([s.x for s in run.samples])
    if x.ndim == 3:  # windows: the newest sample of each window
        x = x[:, -1, :]
    return {"t_ns": t, **{f: x[:, i] for i, f in enumerate(first.features)}}


def run_one(
    rec: Recording, flow: FlowSpec, name: str, args: argparse.Namespace, out: Path
) -> tuple[Replayed, Scored]:
    engine = engine_for(flow)
    if engine is None:
        raise ConfigError(f"flow {flow.name!r} has no model: nothing to score")
    result = replay(rec, flow, engine)
    tag = name.partition(":")[0]  # candidate | against: the file names
    write_parquet(out / f"samples-{tag}.parquet", sample_columns(result))
    write_parquet(out / f"results-{tag}.parquet", result.result_columns())
    return result, scored(name, result, engine, args.score, args.threshold)


def cmd_replay(args: argparse.Namespace) -> int:
    rec = read_recording(args.recording)
    args.out.mkdir(parents=True, exist_ok=True)
    flow = load_flow(args.flow)
    flow = with_model(flow, args.model, args) if args.model else _load(args.flow, args)
    runs = [(f"candidate:{model_name(flow)}", flow)]
    if args.against:
        other = _load(args.against, args)
        runs.append((f"against:{model_name(other)}", other))
    elif args.against_model:
        other = with_model(load_flow(args.flow), args.against_model, args)
        runs.append((f"against:{model_name(other)}", other))
    results = [run_one(rec, f, name, args, args.out) for name, f in runs]
    report = compare([s for _, s in results], rec.meta.labels, round(args.grace_s * 1e9))
    body = report.to_json()
    span = rec.span_ns
    real_s = (span[1] - span[0]) / 1e9 if span else 0.0
    body["replay"] = [
        {
            "name": s.name,
            "readings": r.readings,
            "samples": r.sample_count,
            "seconds": round(r.seconds, 3),
            "samples_per_s": round(r.sample_count / r.seconds, 1) if r.seconds else None,
            "times_real_time": round(real_s / r.seconds, 1) if r.seconds else None,
            "errors": r.errors[:5],
        }
        for r, s in results
    ]
    (args.out / "report.json").write_text(json.dumps(body, indent=2))
    plot([s for _, s in results], rec.meta.labels, args.out / "scores.png")
    if args.json:
        print(json.dumps(body))
    else:
        print(render(report), end="")
        for item in body["replay"]:
            print(
                f"{item['name']}: {item['samples']} samples from {item['readings']} readings in "
                f"{item['seconds']} s ({item['times_real_time']}× real time)"
            )
        print(f"files in {args.out}: report.json, scores.png, samples-*.parquet, results-*.parquet")
    return 0


@cli_errors("edgefleet replay")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.against and args.against_model:
        raise UsageError("give --against or --against-model, not both")
    return cmd_replay(args)


@cli_errors("edgefleet recording")
def recording_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgefleet recording", description="recordings of raw data")
    sub = p.add_subparsers(dest="op", required=True)
    fc = sub.add_parser("from-csv", help="convert a CSV of sensor columns to a recording")
    fc.add_argument("csv", type=Path)
    fc.add_argument("--out", type=Path, required=True)
    fc.add_argument(
        "--source", required=True, help="source id the signals belong to (flows read SOURCE/COLUMN)"
    )
    fc.add_argument("--time", help="the time column (default: the first)")
    fc.add_argument("--unit", help="epoch unit s|ms|us|ns (default: guessed from the size)")
    fc.add_argument("--tz", default="UTC", help="zone of times written without one (UTC)")
    fc.add_argument("--sep", help="field separator (default: sniffed)")
    fc.add_argument("--decimal", default=".", help="decimal mark: . or ,")
    fc.add_argument("--label", help="a label column: runs of non-normal values become labels")
    fc.add_argument("--normal", default="normal", help="the label value of normal rows")
    show = sub.add_parser("show", help="what a recording holds")
    show.add_argument("recording", type=Path)
    show.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.op == "from-csv":
        done = convert(
            args.csv,
            args.out,
            source=args.source,
            time_column=args.time,
            unit=args.unit,
            tz=args.tz,
            sep=args.sep,
            decimal=args.decimal,
            label_column=args.label,
            normal=args.normal,
        )
        print(
            f"{args.out}: {done.rows} rows, {done.readings} readings ({done.bad} bad), "
            f"{len(done.labels)} labelled intervals"
        )
        return 0
    rec = read_recording(args.recording)
    span = rec.span_ns
    info = {
        "site": rec.meta.site,
        "flow": rec.meta.flow,
        "topics": rec.meta.topics,
        "readings": len(rec),
        "batches": int(rec.batch.max()) + 1 if len(rec) else 0,
        "sources": sorted({str(s) for s in rec.source.tolist()}),
        "signals": sorted(
            {f"{a}/{b}" for a, b in zip(rec.source.tolist(), rec.signal.tolist(), strict=True)}
        ),
        "from": iso(span[0]) if span else None,
        "to": iso(span[1]) if span else None,
        "labels": [list(x) for x in rec.meta.labels],
    }
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:<9} {v if not isinstance(v, list) else ', '.join(map(str, v)) or '-'}")
    return 0
