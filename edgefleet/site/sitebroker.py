"""The site broker `edgefleet up` starts (`broker.start_local: true`), supervised like an instance.

- `start()` starts mosquitto before any instance (a failure then is an error: nothing runs yet);
- `run()` (a task) watches it: a death is reported at once through `on_down`, and mosquitto is
  started again after the instances' capped backoff, on the same port, from the same
  persistence folder; a start that fails (the port taken, a config or persistence file mosquitto
  refuses) is reported with mosquitto's own reason and tried again with the same backoff, for
  ever; `on_up` follows every start that listens;
- `save()` asks mosquitto to write its persistence file now (SIGUSR1): the supervisor calls it
  when something that must survive a crash changed (see docs/site.md, "The site broker");
- `stop()` (after every instance): SIGTERM, which saves, then SIGKILL past the timeout.

With `fleet.broker` in site.yaml the broker bridges the control plane to the fleet's broker
(`fleet_bridge`, the lines of `edgefleet.broker.bridge_config`): `desired` in, `status/+` and
`reported` out (and debug sessions'), as MQTT v5 so content types survive, with a persistent
session so a site that was offline gets the latest desired state when it comes back. Results
and events never cross the bridge (the forwarder carries them).

mosquitto runs in a session of its own, as the instances do: a Ctrl-C in the terminal reaches
`up` only, and the broker stays up until the instances that depend on it have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.broker import LocalBroker, bridge_config
from edgefleet.site.model import SiteSpec, SupervisorSettings
from edgefleet.site.orphans import PidFile, die_with_parent
from shared import clock
from shared.errors import ConfigError
from shared.retry import Backoff

LISTEN_TIMEOUT_S = 10.0  # a mosquitto that neither listens nor exits by then is stuck
HOST = "127.0.0.1"


class BrokerStartError(RuntimeError):
    """mosquitto did not come up; the message says why, in mosquitto's words where it gave some."""


@dataclass
class BrokerState:
    """What the supervisor knows of its broker (`SiteSupervisor.broker`)."""

    port: int
    data_dir: Path
    pid: int | None = None  # of the running mosquitto, None between runs
    restarts: int = 0  # how many times it was started again after dying
    state: str = "new"  # starting | online | exited | failed | restarting | stopped
    reason: str = ""  # why the last start failed, or how the last run ended
    exit_codes: list[int] = field(default_factory=list)  # of every run that ended
    started: float = 0.0  # clock.monotonic() just before the current run was spawned
    started_ns: int = 0  # the same moment, wall clock: a status older than this is not its news

    @property
    def running(self) -> bool:
        return self.state == "online" and self.pid is not None


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto binds it
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def fleet_bridge(spec: SiteSpec) -> str:
    """mosquitto lines bridging the site's control plane to `fleet.broker` ("" without one):
    `edgefleet.broker.bridge_config`, the block compose/mosquitto/site.conf shows."""
    if spec.fleet is None or spec.fleet.broker is None:
        return ""
    remote = spec.fleet.broker
    settings = ["restart_timeout 1 10"]  # reconnect backoff (s): first, cap
    if remote.tls:  # mosquitto speaks TLS on a bridge that names its CA
        if remote.ca_file is None:
            raise ConfigError("fleet.broker: tls for the bridge needs ca_file (the fleet's CA)")
        settings.append(f"bridge_cafile {remote.ca_file}")
        if remote.cert_file is not None:
            settings.append(f"bridge_certfile {remote.cert_file}")
            settings.append(f"bridge_keyfile {remote.key_file or remote.cert_file}")
    if remote.username is not None:
        settings.append(f"remote_username {remote.username}")
        password = remote.password()
        if password is not None:
            settings.append(f"remote_password {password}")
    return bridge_config(
        spec.site, f"{remote.host}:{remote.port}", prefix=spec.prefix, settings=tuple(settings)
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _errors_since(path: Path, offset: int) -> list[str]:
    """mosquitto's `Error:` lines written to `path` after `offset`, without their timestamps."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read(64 * 1024).decode(errors="replace")
    except OSError:
        return []
    lines = [line.split(": ", 1)[-1].strip() for line in text.splitlines()]
    return [line.removeprefix("Error: ") for line in lines if line.startswith("Error")]


class SupervisedBroker:
    """One local mosquitto, kept running until `stop()`."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        settings: SupervisorSettings,
        emit: Callable[[str, str], None],
        *,
        on_down: Callable[[str], None] = lambda _why: None,
        on_up: Callable[[], None] = lambda: None,
        extra_config: str = "",
        pids: PidFile | None = None,
    ) -> None:
        self.pids = pids
        self.local = LocalBroker(data_dir, port=port, host=HOST, extra_config=extra_config)
        self.state = BrokerState(port, data_dir)
        self.settings = settings
        self._emit = emit
        self._on_down = on_down
        self._on_up = on_up
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.err_file = data_dir / "mosquitto.err"  # what mosquitto says before its log opens
        self._log_offset = 0  # of the current run's first line in mosquitto.log

    # ------------------------------------------------------------------ public API

    async def start(self) -> None:
        """The first start: `BrokerStartError`, with the reason, if mosquitto does not listen."""
        self._set("starting", f"mosquitto on {HOST}:{self.state.port}")
        await self._launch()
        self._set("online", f"mosquitto on {HOST}:{self.state.port}, pid {self.state.pid}")
        self._on_up()

    async def run(self) -> None:
        """Watch mosquitto and start it again each time it dies, until `stop()`."""
        s = self.settings
        backoff = Backoff(s.restart_initial_s, s.restart_max_s)
        while not self._stopping:
            process = self._process
            if process is None:
                return
            code = await process.wait()
            if self._stopping:
                return
            st = self.state
            st.pid, self._process = None, None
            st.exit_codes.append(code)
            st.reason = f"signal {-code}" if code < 0 else f"exit code {code}"
            errors = _errors_since(self.local.log_file, self._log_offset)
            if errors:
                st.reason += f": {errors[-1]}"
            if clock.monotonic() - st.started >= s.stable_after_s:
                backoff.reset()
            delay = backoff.next_delay()
            self._set("exited", f"{st.reason}; restart {st.restarts + 1} in {delay:.1f} s")
            self._on_down(st.reason)
            while True:
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                st.restarts += 1
                self._set("restarting", f"restart {st.restarts}")
                try:
                    await self._launch()
                    break
                except BrokerStartError as exc:
                    st.reason = str(exc)
                    delay = backoff.next_delay()
                    self._set("failed", f"{exc}; retry in {delay:.1f} s")
            self._set("online", f"mosquitto on {HOST}:{st.port}, pid {st.pid}")
            self._on_up()

    def save(self) -> None:
        """Ask mosquitto to write its persistence file now (it does so in its next loop turn)."""
        # only once it listens: before its handlers are set, SIGUSR1 would end it
        if self.state.state == "online" and self._process and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGUSR1)

    async def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence and exits), SIGKILL past the timeout."""
        self._stopping = True
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self.settings.stop_timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), self.settings.stop_timeout_s)
        self.state.pid = None
        self._set("stopped")

    # ------------------------------------------------------------------ one run

    async def _launch(self) -> None:
        """Spawn mosquitto and return once it listens; raise `BrokerStartError` if it cannot."""
        st = self.state
        if not port_free(HOST, st.port):  # checked first: a connect would reach the other listener
            raise BrokerStartError(f"port {HOST}:{st.port} is in use by another process")
        try:
            command = self.local.command()
        except (OSError, FileNotFoundError) as exc:
            raise BrokerStartError(f"cannot prepare mosquitto: {exc}") from None
        self._log_offset = _size(self.local.log_file)
        err_offset = _size(self.err_file)
        st.started, st.started_ns = clock.monotonic(), clock.now_ns()
        with self.err_file.open("ab") as err:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # Ctrl-C reaches `up`, which stops the broker last
                preexec_fn=die_with_parent,  # a SIGKILLed `up` does not leave its port taken
            )
        if self.pids is not None:
            self.pids.add("broker", process.pid)
        self._process = process  # from now on `stop()` ends it, even in the middle of a start
        exited = asyncio.ensure_future(process.wait())
        listening = asyncio.ensure_future(self._wait_listening())
        try:
            await asyncio.wait(
                [exited, listening], timeout=LISTEN_TIMEOUT_S, return_when="FIRST_COMPLETED"
            )
        finally:
            listening.cancel()
            exited.cancel()
        if process.returncode is None and listening.done() and not listening.cancelled():
            st.pid = process.pid
            return
        self._process = None
        if process.returncode is None:  # neither listens nor exits
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise BrokerStartError(
                f"mosquitto did not listen on {HOST}:{st.port} within {LISTEN_TIMEOUT_S:g} s"
            )
        code = process.returncode
        st.exit_codes.append(code)
        said = _errors_since(self.err_file, err_offset) + _errors_since(
            self.local.log_file, self._log_offset
        )
        why = "; ".join(dict.fromkeys(said)) or f"no reason given; see {self.local.log_file}"
        raise BrokerStartError(f"mosquitto exited at start (code {code}): {why}")

    async def _wait_listening(self) -> None:
        while True:
            try:
                _, writer = await asyncio.open_connection(HOST, self.state.port)
            except OSError:
                await asyncio.sleep(0.02)  # mosquitto says nothing when it listens: ask the port
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    def _set(self, state: str, detail: str = "") -> None:
        self.state.state = state
        self._emit(state, detail)


__all__ = ["BrokerStartError", "BrokerState", "SupervisedBroker", "fleet_bridge", "port_free"]
