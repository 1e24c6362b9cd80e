"""`edgefleet cloud up`: the cloud side on one machine, no containers.

Starts a local mosquitto as the cloud broker, SeaweedFS as the S3 server, the fleet service
(`edgefleet run fleet --config {workdir}/fleet.yaml`, a config it writes) and the web console
(`edgefleet console --fleet`, users in {workdir}/console), restarts the fleet service if it
dies, and stops them all on Ctrl-C or SIGTERM. State stays in the workdir
(broker persistence, S3 data and its generated secret, fleet.db, the signing key fleet.key made
on the first run), so the next `cloud up` finds the library, nodes and deployments as they were.
Production runs the same service from compose/cloud.yml.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

import yaml

from edgefleet.broker import LocalBroker, free_port
from edgefleet.cli_errors import cli_errors
from edgefleet.locals3 import LocalS3
from shared.signing import PublicKey, SigningKey

RESTART_DELAY_S = 1.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet cloud", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)
    up = sub.add_parser("up", help="broker + S3 + fleet service until Ctrl-C")
    up.add_argument("--workdir", type=Path, default=Path("var/cloud"))
    up.add_argument("--port", type=int, default=1883, help="the cloud broker's port (1883)")
    up.add_argument("--s3-port", type=int, default=8333, help="the S3 server's port (8333)")
    up.add_argument(
        "--console-port", type=int, default=8080, help="the web console's port (8080; 0: none)"
    )
    return p


def secret_of(path: Path) -> str:
    """The S3 secret of this workdir: made once, kept across runs."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
        os.chmod(path, 0o600)
    return path.read_text().strip()


def signing_key_of(path: Path) -> SigningKey:
    """The fleet's signing key of this workdir: made once (sites trust its public half), kept."""
    if not path.exists():
        SigningKey.generate().save(path)
    return SigningKey.load(path)


def fleet_config(workdir: Path, broker: LocalBroker, s3: LocalS3) -> Path:
    config = {
        "broker": {"host": broker.host, "port": broker.port},
        "db": "fleet.db",
        "work_dir": "work",
        "signing_key": "fleet.key",
        "s3": {
            "endpoint": s3.endpoint,
            "access_key": s3.access_key,
            "secret_key_file": "s3/secret",
        },
    }
    path = workdir / "fleet.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_console(workdir: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    """`edgefleet console --fleet` on the fleet's config, its users and key in the workdir."""
    command = [sys.executable, "-m", "edgefleet.cli", "console", "--fleet", str(config)]
    command += ["--listen", f"127.0.0.1:{port}", "--state", str(workdir / "console")]
    with (workdir / "logs" / "console.log").open("ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _end(process: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _stop(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def up(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop)
    broker = LocalBroker(workdir / "broker", port=args.port)
    s3 = LocalS3(workdir / "s3", port=args.s3_port, secret_key=secret_of(workdir / "s3" / "secret"))
    fleet: subprocess.Popen[bytes] | None = None
    console: subprocess.Popen[bytes] | None = None
    try:
        broker.start()
        print(f"cloud broker   mqtt://{broker.host}:{broker.port}", flush=True)
        s3.start()
        print(f"S3 (SeaweedFS) http://{s3.endpoint}  data in {s3.data_dir}", flush=True)
        key = signing_key_of(workdir / "fleet.key")
        print(
            f"signing key    {workdir / 'fleet.key'}  id {key.public.key_id}\n"
            f"               public key {key.public.text()} (list it in each site.yaml's "
            "fleet.trusted_keys)",
            flush=True,
        )
        config = fleet_config(workdir, broker, s3)
        command = [sys.executable, "-m", "edgefleet.cli", "run", "fleet", "--config", str(config)]
        if args.console_port:
            console = start_console(workdir, config, args.console_port)
            print(
                f"web console    http://127.0.0.1:{args.console_port}/  pid {console.pid}, log "
                f"{workdir}/logs/console.log\n"
                f"               users: edgefleet console user add NAME --role operator "
                f"--state {workdir / 'console'}",
                flush=True,
            )
        while True:
            with (workdir / "logs" / "fleet.log").open("ab") as log:
                fleet = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            print(
                f"fleet service  pid {fleet.pid}, config {config}, log {workdir}/logs/fleet.log\n"
                f"ready: edgefleet library list --fleet {broker.host}:{broker.port}; "
                "Ctrl-C stops everything",
                flush=True,
            )
            code = fleet.wait()
            print(f"fleet service exited with code {code}; restarting", flush=True)
            time.sleep(RESTART_DELAY_S)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        _end(console)
        _end(fleet)
        s3.stop()
        broker.stop()
    return 0


class CloudProcess:
    """`edgefleet cloud up` in a child process, on free ports, for the fleet demo and the
    end-to-end tests: `start()` returns once it printed `ready:`; `stop()` ends it (SIGTERM:
    it stops the console, the fleet service, S3 and the broker in order)."""

    def __init__(self, workdir: Path, console_port: int = 0, log: Path | None = None) -> None:
        self.workdir, self.console_port, self.log = workdir, console_port, log
        self.port, self.s3_port = free_port(), free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CloudProcess:
        command = [sys.executable, "-m", "edgefleet.cli", "cloud", "up", "--workdir",
                   str(self.workdir), "--port", str(self.port), "--s3-port", str(self.s3_port),
                   "--console-port", str(self.console_port)]  # fmt: skip
        # its own session: a Ctrl-C in the terminal reaches the parent, which stops it last
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.process.stdout is not None
        lines = []
        for line in self.process.stdout:
            lines.append(line)
            if line.startswith("ready:"):
                break
        else:
            raise RuntimeError(f"cloud up ended ({self.process.wait()}): {''.join(lines)}")
        # the rest of what it prints goes on to the log (a closed pipe would break its prints)
        threading.Thread(
            target=_drain, args=(self.process.stdout, lines, self.log), daemon=True
        ).start()
        return self

    @property
    def key(self) -> PublicKey:
        """The fleet's public key: what each site lists in its fleet.trusted_keys."""
        return SigningKey.load(self.workdir / "fleet.key").public

    def stop(self) -> None:
        process, self.process = self.process, None
        _end(process, 30)  # it stops its own children first


def _drain(out: IO[str], lines: list[str], log: Path | None) -> None:
    with contextlib.ExitStack() as stack:
        to = stack.enter_context(log.open("a")) if log is not None else None
        for line in itertools.chain(lines, out):
            if to is not None:
                to.write(line)
                to.flush()
        out.close()


@cli_errors("edgefleet cloud")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return up(args)
