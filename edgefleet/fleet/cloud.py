"""`edgefleet cloud up`: the cloud side on one machine, no containers.

Starts a local mosquitto as the cloud broker, SeaweedFS as the S3 server, the fleet service
(`edgefleet run fleet --config {workdir}/fleet.yaml`, a config it writes) and the web console
(`edgefleet console --fleet`, users in {workdir}/console), restarts the fleet service if it
dies, and stops them all on Ctrl-C or SIGTERM. State stays in the workdir
(broker persistence, S3 data and its generated secret, fleet.db, the signing key fleet.key made
on the first run), so the next `cloud up` finds the library, nodes and deployments as they were.
Production runs the same service from compose/cloud.yml.

Per-site credentials: with an auth folder (`--auth-dir DIR`, or `{workdir}/auth` once it
exists), the broker enforces the users and ACL that `edgefleet site add SITE --auth-dir DIR`
writes (edgefleet.cloud_auth, the same files compose/mosquitto/cloud.conf names) on every
listener: the loopback one on `--port`, and a TLS one on `--tls-port` (all interfaces) when
the folder has the CA and the broker's certificate. The fleet service and the console log in
as the user `fleet`. `site add` and `site remove` reload the running broker (SIGHUP). Without
an auth folder the broker listens on loopback only and lets any client in (any local process
may write any site's tree or fleet command): for one person's machine, and said so at start.
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

from edgefleet import cloud_auth
from edgefleet.broker import LocalBroker, free_port
from edgefleet.cli_errors import cli_errors
from edgefleet.fleet.address import ENV_PASSWORD
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
    up.add_argument(
        "--auth-dir",
        type=Path,
        help="per-site users and ACL from `edgefleet site add --auth-dir` (default: "
        "{workdir}/auth if it exists; else no authentication, loopback only)",
    )
    up.add_argument(
        "--tls-port",
        type=int,
        default=8883,
        help="with an auth folder that has tls/: the sites' TLS listener (8883; 0: none)",
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


def fleet_config(
    workdir: Path, broker: LocalBroker, s3: LocalS3, password_file: Path | None
) -> Path:
    login = {} if password_file is None else {
        "username": cloud_auth.FLEET_USER, "password_file": str(password_file),
    }  # fmt: skip
    config = {
        "broker": {"host": broker.host, "port": broker.port, **login},
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


def auth_of(args: argparse.Namespace, workdir: Path) -> Path | None:
    """The auth folder: the one given, else the workdir's once it exists (so a cloud whose
    sites have credentials never comes up open because a flag was forgotten)."""
    if args.auth_dir is not None:
        return Path(args.auth_dir).resolve()
    default = workdir / "auth"
    return default if default.is_dir() else None


def auth_lines(auth: Path, password_file: Path, tls_port: int) -> str:
    """What `up` says about the broker's users, ACL and TLS listener."""
    pad = " " * 15
    lines = [
        f"{pad}per-site users and ACL of {auth} (`edgefleet site add SITE --auth-dir {auth}` "
        "reloads the broker)",
        f"{pad}fleet service and console: user {cloud_auth.FLEET_USER}, password in "
        f"{password_file}",
    ]
    if not tls_port:
        lines.append(f"{pad}no TLS listener (--tls-port 0)")
    elif cloud_auth.has_tls(auth):
        ca = auth / "tls" / "ca.crt"
        lines.append(f"{pad}sites over TLS: mqtts://0.0.0.0:{tls_port} (CA {ca})")
    else:
        lines.append(
            f"{pad}no TLS listener yet: the first `edgefleet site add --cloud HOST:PORT` makes "
            "tls/ (a CA, the broker's certificate for HOST); restart cloud up after it"
        )
    return "\n".join(lines)


def up(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop)
    auth = auth_of(args, workdir)
    password_file = None if auth is None else cloud_auth.ensure_fleet_user(auth)
    settings = "" if auth is None else cloud_auth.broker_settings(auth, args.tls_port)
    broker = LocalBroker(workdir / "broker", port=args.port, extra_config=settings)
    s3 = LocalS3(workdir / "s3", port=args.s3_port, secret_key=secret_of(workdir / "s3" / "secret"))
    fleet: subprocess.Popen[bytes] | None = None
    console: subprocess.Popen[bytes] | None = None
    try:
        broker.start()
        print(f"cloud broker   mqtt://{broker.host}:{broker.port}", flush=True)
        try_it = f"edgefleet library list --fleet {broker.host}:{broker.port}"
        if auth is None:
            print(
                "               NO AUTHENTICATION: loopback only, and any local process may "
                "write any site's tree and fleet commands; --auth-dir DIR for per-site users",
                flush=True,
            )
        else:
            assert broker.process is not None and password_file is not None
            (auth / cloud_auth.BROKER_PID).write_text(str(broker.process.pid))
            print(auth_lines(auth, password_file, args.tls_port), flush=True)
            try_it = (
                f"{ENV_PASSWORD}=$(cat {password_file}) edgefleet library list --fleet "
                f"mqtt://{cloud_auth.FLEET_USER}@{broker.host}:{broker.port}"
            )
        s3.start()
        print(f"S3 (SeaweedFS) http://{s3.endpoint}  data in {s3.data_dir}", flush=True)
        key = signing_key_of(workdir / "fleet.key")
        print(
            f"signing key    {workdir / 'fleet.key'}  id {key.public.key_id}\n"
            f"               public key {key.public.text()} (list it in each site.yaml's "
            "fleet.trusted_keys)",
            flush=True,
        )
        config = fleet_config(workdir, broker, s3, password_file)
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
                f"ready: {try_it}; "
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
        if auth is not None:  # no reload signal to a pid that may be reused
            (auth / cloud_auth.BROKER_PID).unlink(missing_ok=True)
    return 0


class CloudProcess:
    """`edgefleet cloud up` in a child process, on free ports, for the fleet demo and the
    end-to-end tests: `start()` returns once it printed `ready:`; `stop()` ends it (SIGTERM:
    it stops the console, the fleet service, S3 and the broker in order)."""

    def __init__(
        self,
        workdir: Path,
        console_port: int = 0,
        log: Path | None = None,
        auth_dir: Path | None = None,
    ) -> None:
        self.workdir, self.console_port, self.log = workdir, console_port, log
        self.auth_dir = auth_dir
        self.port, self.s3_port = free_port(), free_port()
        self.tls_port = free_port() if auth_dir is not None else 0
        self.process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CloudProcess:
        command = [sys.executable, "-m", "edgefleet.cli", "cloud", "up", "--workdir",
                   str(self.workdir), "--port", str(self.port), "--s3-port", str(self.s3_port),
                   "--console-port", str(self.console_port),
                   "--tls-port", str(self.tls_port)]  # fmt: skip
        if self.auth_dir is not None:
            command += ["--auth-dir", str(self.auth_dir)]
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
