"""Library transfers and command round trips, against the raw limits in the same run.

- push (presigned PUT with the digest signed in + `library.commit`: HEAD, the inspecting child
  downloads the object itself, hashes it and loads it in onnxruntime, SQLite commit) and pull
  (presigned GET, sha256 in a thread behind, writeback as it goes, one fsync, rename) of a model
  of --mb MB, against the raw minio client's put/get of the same file to the same S3 server
  (SeaweedFS started here), the two side by side in each round; goal: ≥ 0.8× the raw
  throughput. Also printed: the whole push against the upload plus one raw get of the object,
  the least a commit that loads the stored bytes can take.
- command round trip (`library.list` on a small library) p50/p99 through the fleet service (a
  real process), against a raw MQTT v5 request/response (an echo responder on the same broker,
  the same client module).

    PYTHONPATH=. .venv/bin/python bench/library_transfer.py [--mb 100] [--rounds 3] [--n 300]
        [--staged]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from minio import Minio
from onnx import TensorProto, helper, numpy_helper

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient, connect, file_sha256, put_file
from edgefleet.locals3 import LocalS3
from shared import codec
from shared.mqtt import BrokerSettings, MqttConnection, Received
from shared.requests import Requester

BUCKET = "edgefleet"


def big_model(path: Path, mb: int, seed: int) -> Path:
    """y = x @ W with W float32 [k, k] of about `mb` MB."""
    k = int((mb * 2**20 / 4) ** 0.5)
    w = np.random.default_rng(seed).standard_normal((k, k), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", k])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def interleaved_rounds(
    fleet: FleetClient, s3: Minio, files: list[Path], tmp: Path, staged: bool
) -> dict[str, list[float]]:
    """Per round, back to back: raw put, push (upload, then commit), raw get, pull. The raw
    limit is measured next to each fleet transfer, so a load spike on the shared machine hits
    both sides of a ratio, not one."""
    out: dict[str, list[float]] = {
        k: [] for k in ("put", "upload", "commit", "push", "get", "pull")
    }
    if staged:
        out.update({k: [] for k in ("s_upload", "s_commit", "s_push")})
    for i, path in enumerate(files):
        t0 = time.perf_counter()
        s3.fput_object(BUCKET, f"raw/{i}", str(path))
        out["put"].append(time.perf_counter() - t0)
        result = await push(fleet, path, "big", out, "", declare=True)
        if staged:  # other bytes of the same size: a staged upload, read back, copied
            other = path.with_name(f"staged-{path.name}")
            await push(fleet, other, "staged", out, "s_", declare=False)
        t0 = time.perf_counter()
        s3.fget_object(BUCKET, f"raw/{i}", str(tmp / f"raw{i}"))
        out["get"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await fleet.pull(result["resource"]["ref"], tmp / f"pulled{i}.onnx")
        out["pull"].append(time.perf_counter() - t0)
    return out


async def push(
    fleet: FleetClient, path: Path, name: str, out: dict[str, list[float]], key: str, declare: bool
) -> dict[str, Any]:
    """`library push` as the CLI does it (`FleetClient.push`), its two stages timed apart:
    with `declare`, the digest is hashed first and signed into the upload URL (S3 checks it);
    without, the upload is staged and the fleet reads it back to verify it. Either way the
    fleet starts the inspecting child when it hands out the URL (the kind is given)."""
    size = (await asyncio.to_thread(path.stat)).st_size
    t0 = time.perf_counter()
    request: dict[str, Any] = {"name": name, "size": size, "kind": "model"}
    if declare:
        request["sha256"] = await asyncio.to_thread(file_sha256, path)
    upload = await fleet.call("library.upload_url", request)
    sha256 = await asyncio.to_thread(
        put_file, upload["url"], path, size, None, upload.get("headers")
    )
    t1 = time.perf_counter()
    args = {"upload_id": upload["upload_id"], "name": name, "kind": "model"}
    result: dict[str, Any] = await fleet.call(
        "library.commit", {**args, "sha256": sha256, "size": size}, timeout=600
    )
    t2 = time.perf_counter()
    out[f"{key}upload"].append(t1 - t0)
    out[f"{key}commit"].append(t2 - t1)
    out[f"{key}push"].append(t2 - t0)
    return result


async def round_trips(fleet: FleetClient, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fleet.call("library.list")
        out.append((time.perf_counter() - t0) * 1e3)
    return out


async def raw_round_trips(broker: LocalBroker, n: int) -> list[float]:
    """An echo responder and a requester on the same broker, through shared.mqtt."""
    topic, reply = "bench/raw/commands", "bench/raw/reply"
    holder: list[MqttConnection] = []

    async def echo(message: Received) -> None:
        await holder[0].publish(
            message.response_topic or reply,
            message.payload,
            content_type=message.content_type,
            qos=1,
            correlation_data=message.correlation_data,
        )

    responder = MqttConnection(BrokerSettings(broker.host, broker.port, "raw-echo"), echo)
    holder.append(responder)
    await responder.subscribe(topic)
    requests: list[Requester] = []

    async def route(message: Received) -> None:
        await requests[0].on_reply(message)

    client = MqttConnection(BrokerSettings(broker.host, broker.port, "raw-req"), route)
    requests.append(Requester(client, reply))
    await client.subscribe(reply)
    tasks = [asyncio.create_task(c.run()) for c in (responder, client)]
    try:
        for c in (responder, client):
            await c.wait_connected()
        await asyncio.sleep(0.2)  # both subscriptions in place
        body = {"v": 1, "cmd": "library.list", "args": {}}
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await requests[0].request(topic, body, timeout=5, encoding=codec.Encoding.JSON)
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def start_fleet(tmp: Path, broker: LocalBroker, s3: LocalS3) -> subprocess.Popen[bytes]:
    """The fleet service as a real process, as `edgefleet run fleet` runs it."""
    os.environ["BENCH_S3_SECRET"] = s3.secret_key
    config = {
        "broker": {"host": broker.host, "port": broker.port},
        "db": str(tmp / "fleet.db"),
        "work_dir": str(tmp / "work"),
        "s3": {
            "endpoint": s3.endpoint,
            "access_key": s3.access_key,
            "secret_key_env": "BENCH_S3_SECRET",
            "bucket": BUCKET,
        },
    }
    (tmp / "fleet.yaml").write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "run",
            "fleet",
            "--config",
            str(tmp / "fleet.yaml"),
        ],
        stdout=(tmp / "fleet.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


async def run(args: argparse.Namespace, tmp: Path) -> None:
    broker = LocalBroker(tmp / "broker").start()
    s3 = LocalS3(tmp / "s3").start()
    fleet_proc = None
    try:
        fleet_proc = start_fleet(tmp, broker, s3)
        files = [big_model(tmp / f"m{i}.onnx", args.mb, i) for i in range(args.rounds)]
        if args.staged:
            for i in range(args.rounds):
                big_model(tmp / f"staged-m{i}.onnx", args.mb, 1000 + i)
        size_mb = files[0].stat().st_size / 2**20
        minio = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False, region="us-east-1")
        async with connect(f"{broker.host}:{broker.port}", timeout=2) as fleet:
            for _ in range(100):  # until the service answers
                try:
                    await fleet.call("library.list", timeout=0.5)
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            rounds = await interleaved_rounds(fleet, minio, files, tmp, args.staged)
            fleet_ms = await round_trips(fleet, args.n)
        raw_ms = await raw_round_trips(broker, args.n)
    finally:
        if fleet_proc is not None:
            fleet_proc.terminate()
            fleet_proc.wait(10)
        s3.stop()
        broker.stop()

    med = {k: statistics.median(v) for k, v in rounds.items()}
    put, upload, commit, push = med["put"], med["upload"], med["commit"], med["push"]
    get, pull = med["get"], med["pull"]

    def ratio(raw: str, ours: str) -> str:
        """The median of the per-round ratios (each round's raw beside each round's own)."""
        per = [r / o for r, o in zip(rounds[raw], rounds[ours], strict=True)]
        return f"{statistics.median(per):.2f}× (rounds {' '.join(f'{x:.2f}' for x in per)})"

    print(f"model {size_mb:.1f} MB, {args.rounds} rounds, medians (SeaweedFS on loopback):")
    print(f"  raw minio put  {size_mb / put:7.1f} MB/s  ({put:.2f} s)")
    print(
        f"  push, upload   {size_mb / upload:7.1f} MB/s ({upload:.2f} s) {ratio('put', 'upload')}"
    )
    print(f"  push, commit   {commit:.2f} s (HEAD, the child's read from S3, load, run on zeros)")
    print(f"  push, whole    {size_mb / push:7.1f} MB/s ({push:.2f} s) {ratio('put', 'push')}")
    # What no design that loads the stored bytes before it answers can beat: the upload,
    # then one read of the object at the raw client's speed (and a load of no time at all).
    bound = [
        (u + g) / p for u, g, p in zip(rounds["upload"], rounds["get"], rounds["push"], strict=True)
    ]
    print(
        f"  whole push against upload + one raw get: {statistics.median(bound):.2f}× "
        f"(rounds {' '.join(f'{x:.2f}' for x in bound)})"
    )
    if args.staged:
        s_upload, s_commit, s_push = med["s_upload"], med["s_commit"], med["s_push"]
        print("  staged push (no digest declared: read back to verify, server-side copy):")
        print(f"    upload       {size_mb / s_upload:7.1f} MB/s ({s_upload:.2f} s)")
        print(f"    commit       {s_commit:.2f} s")
        whole = f"{size_mb / s_push:7.1f} MB/s ({s_push:.2f} s)"
        print(f"    whole        {whole} {ratio('put', 's_push')}")
    print(f"  raw minio get  {size_mb / get:7.1f} MB/s  ({get:.2f} s)")
    print(f"  library pull   {size_mb / pull:7.1f} MB/s ({pull:.2f} s) {ratio('get', 'pull')}")
    for line in (tmp / "fleet.log").read_text().splitlines():
        if "committed big@" in line or "committed staged@" in line:
            print("   ", line.split("INFO", 1)[-1].strip()[:200])
    print(f"command round trip, {args.n} calls:")
    print(f"  raw MQTT v5 req/resp p50 {pct(raw_ms, 50):6.2f} ms  p99 {pct(raw_ms, 99):6.2f} ms")
    print(
        f"  fleet library.list   p50 {pct(fleet_ms, 50):6.2f} ms  p99 {pct(fleet_ms, 99):6.2f} ms"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--staged", action="store_true", help="also push without a declared digest")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
