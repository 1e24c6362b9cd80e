"""`edgefleet replay --model NAME@N`: a library model fetched from a real fleet (mosquitto,
SeaweedFS, fleet service) through its presigned URL, cached by digest, verified before use."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml

from edgefleet.broker import LocalBroker
from edgefleet.fleet.client import FleetClient
from tests.fleet.conftest import bucket, fleet, fleet_config, s3, shared_s3
from tests.replay.test_replay_cli import PUMP_FLOW, pump_recording, run, score_model

__all__ = ["bucket", "fleet", "fleet_config", "s3", "shared_s3"]  # fixtures


async def test_replay_a_library_version_against_another(
    tmp_path: Path, broker: LocalBroker, fleet: FleetClient, site: str
) -> None:
    rec = await asyncio.to_thread(pump_recording, tmp_path)
    live = (await fleet.push(score_model(tmp_path / "l.onnx", 0.5), "pump-sc", "model"))["resource"]
    cand = (await fleet.push(score_model(tmp_path / "c.onnx", 2.0), "pump-sc", "model"))["resource"]
    # the live flow names its model the way a fleet flow does: a library reference
    (tmp_path / "live.yaml").write_text(
        yaml.safe_dump({**PUMP_FLOW, "model": {"ref": live["ref"]}})
    )
    cache, out = tmp_path / "cache", tmp_path / "out"
    fleet_args = [
        "--fleet",
        f"{broker.host}:{broker.port}",
        "--prefix",
        site,
        "--cache",
        str(cache),
    ]
    args = ["replay", str(rec), "--flow", str(tmp_path / "live.yaml"), "--out", str(out)]
    done = await asyncio.to_thread(
        run, *args, "--model", cand["ref"], "--against-model", live["ref"], *fleet_args
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    names = [e["name"] for e in report["evaluations"]]
    assert names == [f"candidate:{cand['ref']}", f"against:{live['ref']}"], names
    assert report["agreement"]["score_correlation"] > 0.99
    blobs = cache / "sha256"
    assert {p.name for p in blobs.iterdir()} == {cand["sha256"], live["sha256"]}

    # cached by digest: a changed blob is refused (and removed), never used; the next run
    # downloads it again
    (blobs / cand["sha256"]).write_bytes(b"not the model")
    tampered = await asyncio.to_thread(run, *args, "--model", cand["ref"], *fleet_args)
    assert tampered.returncode != 0 and cand["sha256"][:12] in tampered.stderr, tampered.stderr
    assert not (blobs / cand["sha256"]).exists()
    fetched = await asyncio.to_thread(run, *args, "--model", cand["ref"], *fleet_args)
    assert fetched.returncode == 0, fetched.stderr
    assert (blobs / cand["sha256"]).is_file()

    # the flow's own reference, no --model
    again = await asyncio.to_thread(run, *args, *fleet_args, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["evaluations"][0]["name"] == f"candidate:{live['ref']}"

    unknown = await asyncio.to_thread(run, *args, "--model", "pump-sc@9", *fleet_args)
    assert unknown.returncode == 1 and "pump-sc@9" in unknown.stderr, unknown.stderr
