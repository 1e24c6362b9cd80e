"""The adapter's one session to the device: requests serialised, failures raised as DeviceError,
a fresh session when the device stays silent longer than `dead_after_s`, and after a failed
connect no new try before a capped backoff (`reconnect_s` doubling to `reconnect_max_s`), so a
device that is off costs one connect timeout per backoff step, not one per poll."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from services.modbus.config import ModbusConfig
from shared import clock
from shared.retry import Backoff, raise_if_cancelled

log = logging.getLogger(__name__)


# What each Modbus exception code says (Modbus Application Protocol 1.1b3, 7), and what to do.
EXCEPTIONS: dict[int, str] = {
    0x01: "illegal function: the device does not serve this table's function code",
    0x02: "illegal data address: no such register or coil at this unit (addresses are 0-based)",
    0x03: "illegal data value: the device refuses this request's count or value",
    0x04: "server device failure: the device failed while serving the request",
    0x05: "acknowledge: the device took a long request and has no data yet",
    0x06: "server device busy: the device is busy; the next poll asks again",
    0x07: "negative acknowledge: the device cannot carry out the request",
    0x08: "memory parity error: the device found its memory inconsistent",
    0x0A: "gateway path unavailable: the gateway has no path to this unit id",
    0x0B: "gateway target device failed to respond: the unit behind the gateway is silent",
}


def exception_text(code: int) -> str:
    """`0x02 illegal data address: ...`; a code the specification does not define says so."""
    meaning = EXCEPTIONS.get(code, "a code the Modbus specification does not define")
    return f"exception 0x{code:02X} {meaning}"


class DeviceError(Exception):
    """A request failed: `code` is the Modbus exception code, or 0 for no answer."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class Device:
    """The one session to the device; requests are serialised."""

    def __init__(self, config: ModbusConfig) -> None:
        self.config = config.device
        self.lock = asyncio.Lock()
        self.client: AsyncModbusTcpClient | None = None
        self.last_ok = clock.monotonic()
        self.down = False
        self.connects = 0  # connect attempts, for the health
        self.backoff = Backoff(self.config.reconnect_s, self.config.reconnect_max_s)
        self._next_connect = 0.0  # clock.monotonic() before which no connect is tried

    def _new_client(self) -> AsyncModbusTcpClient:
        c = self.config
        framer = FramerType.RTU if c.framer == "rtu" else FramerType.SOCKET
        return AsyncModbusTcpClient(
            c.host,
            port=c.port,
            framer=framer,
            timeout=c.timeout_s,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
        )

    async def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    async def call(self, name: str, *args: Any, **kw: Any) -> Any:
        """Run one client request under the lock; raise DeviceError on any failure."""
        async with self.lock:
            if self.client is None or not self.client.connected:
                await self._connect()
            try:
                async with asyncio.timeout(self.config.timeout_s * 1.5):
                    rr = await getattr(self.client, name)(*args, **kw)
            except (TimeoutError, ModbusException, OSError) as exc:
                raise_if_cancelled()
                self._silent()
                raise DeviceError(0, f"no answer: {exc}") from None
            # pymodbus waits for the answer with asyncio.wait_for, which on Python 3.11 returns
            # it when a stop's cancel lands as it comes: the poll loop would then run for ever
            raise_if_cancelled()
            self.last_ok, self.down = clock.monotonic(), False
            if rr.isError():
                code = int(getattr(rr, "exception_code", 4))
                raise DeviceError(code, exception_text(code))
            return rr

    async def _connect(self) -> None:
        where = f"{self.config.host}:{self.config.port}"
        wait = self._next_connect - clock.monotonic()
        if wait > 0:
            raise DeviceError(0, f"cannot connect to {where}: next try in {wait:.1f} s")
        await self.close()
        self.client = self._new_client()
        self.connects += 1
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(self.config.timeout_s):
                await self.client.connect()
        raise_if_cancelled()  # a stop that landed as the connect failed: not a retry
        if not self.client.connected:
            self._next_connect = clock.monotonic() + self.backoff.next_delay()
            self._silent()
            raise DeviceError(0, f"cannot connect to {where}")
        self.backoff.reset()

    def _silent(self) -> None:
        if clock.monotonic() - self.last_ok > self.config.dead_after_s:
            if not self.down:
                log.warning(
                    "modbus device %s:%d down: no answer for %.1f s",
                    self.config.host,
                    self.config.port,
                    self.config.dead_after_s,
                )
            self.down = True
            if self.client is not None:  # a fresh session on the next request
                self.client.close()
                self.client = None
