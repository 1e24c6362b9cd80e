"""A local mosquitto process, as the demo, `edgefleet up` and the tests start it.

The settings are those of compose/mosquitto/site.conf, on a port of our choosing; persistence
goes to a folder of the caller's so a restart keeps retained messages and sessions.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.local_process import LocalProcess
from shared.topics import Topics

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PATHS if Path(p).exists()), None
    )
    if not found:
        raise FileNotFoundError(
            "mosquitto is not installed: run `make setup` (apt-get install mosquitto)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)


def config_text(port: int, data_dir: Path, extra: str = "") -> str:
    """The shipped site settings on `port`; `extra` adds lines (auth, ACLs, bridges).

    Persistence: a save every 30 s (time-based, not `autosave_on_changes`: each save writes the
    whole database with an fsync, and a backlog queued for an offline persistent session may
    reach `max_queued_bytes`; a save per change would write it per message). A SIGKILL loses
    what changed since the last save; `edgefleet up` narrows that for what must survive by
    asking for a save (SIGUSR1) whenever a config, desired or reported message changes and
    whenever an instance comes online (its session and subscriptions): see docs/site.md.
    """
    if "allow_anonymous" not in extra:
        extra = "allow_anonymous true\n" + extra
    if os.geteuid() == 0:  # as root mosquitto drops to user `mosquitto`, who cannot read our files
        extra = "user root\n" + extra
    return f"""\
per_listener_settings false
listener {port} 127.0.0.1
set_tcp_nodelay true
max_queued_messages 1000000
max_queued_bytes 1073741824
max_inflight_messages 1000
queue_qos0_messages false
persistence true
persistence_location {data_dir}/
autosave_interval 30
log_dest file {data_dir}/mosquitto.log
log_type error
log_type warning
log_type notice
{extra}"""


def bridge_config(
    site: str,
    address: str,
    *,
    prefix: str = "ef",
    connection: str = "cloud",
    settings: tuple[str, ...] = (),
) -> str:
    """The site broker's bridge to the cloud broker at `address` (`host:port`): MQTT v5 (or
    content types and message expiry are lost), a persistent session (what the cloud sends
    while the link is down arrives after it), and the control plane only, as
    `Topics.bridged()` lists it: desired states and debug session requests in; statuses,
    reported states and debug sessions' states and data out. Debug data crosses only while a
    session is open because the agent publishes it only then. `settings` adds lines (TLS,
    credentials) after the address; compose/mosquitto/site.conf shows this block commented.

    Bridge notifications on `Topics.bridge()`: the bridge publishes a retained `1` on the cloud
    broker once connected and leaves `0` there as its last will, so the fleet learns that the
    whole site went away (the agent's own last will dies with the site broker)."""
    topics = Topics(site, prefix)
    lines = [
        f"connection {connection}",
        f"address {address}",
        "bridge_protocol_version mqttv50",
        f"remote_clientid site-{site}",
        "cleansession false",
        "notifications true",
        "notifications_local_only false",
        f"notification_topic {topics.bridge()}",
        *settings,
    ]
    lines += [f"topic {t} {d} {q}" for t, d, q in topics.bridged()]
    return "\n".join(lines) + "\n"


@dataclass
class LocalBroker(LocalProcess):
    """`start()`, `stop()`, `kill()` and `restart()` keep the same port and persistence."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "mosquitto.log"

    def command(self) -> list[str]:
        """Write the config file and return the command line that runs mosquitto on it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(config_text(self.port, self.data_dir, self.extra_config))
        return [find_mosquitto(), "-c", str(conf)]

    def start(self) -> LocalBroker:
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            log = self.data_dir / "mosquitto.log"
            detail = log.read_text()[-500:] if log.exists() else ""
            raise RuntimeError(f"mosquitto did not start on port {self.port}: {detail}") from None
        return self
