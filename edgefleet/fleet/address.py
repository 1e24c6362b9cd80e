"""Where the fleet's broker is, and how to log in: for the command line and other programs.

    --fleet 127.0.0.1:1883                       host:port, no credentials, no TLS
    --fleet mqtts://ops:secret@fleet.example     TLS (port 8883 unless given), user and password
    --fleet mqtt://ops@fleet.example:1883        a user; the password from $EDGEFLEET_FLEET_PASSWORD

The address comes from `--fleet`, else $EDGEFLEET_FLEET, else 127.0.0.1:1883. The password in
the URL is optional: $EDGEFLEET_FLEET_PASSWORD keeps it off the command line. TLS: `mqtts://`, or
a CA file (`--cafile`, $EDGEFLEET_FLEET_CA; default: the system's CAs); a client certificate
with `--cert`/`--key` ($EDGEFLEET_FLEET_CERT, $EDGEFLEET_FLEET_KEY). The console on the fleet
reads all of it from fleet.yaml's `broker` instead.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from shared.config import BrokerConfig
from shared.errors import ConfigError
from shared.mqtt import BrokerSettings

DEFAULT_ADDRESS = "127.0.0.1:1883"
ENV_ADDRESS = "EDGEFLEET_FLEET"
ENV_PASSWORD = "EDGEFLEET_FLEET_PASSWORD"
ENV_CA, ENV_CERT, ENV_KEY = "EDGEFLEET_FLEET_CA", "EDGEFLEET_FLEET_CERT", "EDGEFLEET_FLEET_KEY"
PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"fleet address {address!r}: expected host:port (127.0.0.1:1883)")
    return host or "127.0.0.1", int(port)


class FleetBroker:
    """The fleet's broker as the client connects to it: a BrokerConfig and the password."""

    def __init__(self, config: BrokerConfig, password: str | None = None) -> None:
        self.config, self.password = config, password

    @property
    def where(self) -> str:
        scheme = "mqtts" if self.config.tls else "mqtt"
        user = f"{self.config.username}@" if self.config.username else ""
        return f"{scheme}://{user}{self.config.host}:{self.config.port}"

    def settings(self, client_id: str) -> BrokerSettings:
        overrides: dict[str, Any] = {"reconnect_max_s": 1.0}
        if self.password is not None:
            overrides["password"] = self.password
        return self.config.settings(client_id, **overrides)

    @classmethod
    def of(
        cls,
        address: str | None = None,
        *,
        cafile: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
    ) -> FleetBroker:
        """From the arguments, else the environment, else the defaults (the module's doc)."""
        text = address or os.environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS
        cafile = cafile or _env_path(ENV_CA)
        cert, key = cert or _env_path(ENV_CERT), key or _env_path(ENV_KEY)
        if key is not None and cert is None:
            raise ConfigError("a client key needs its certificate: give --cert too")
        for flag, path in (("--cafile", cafile), ("--cert", cert), ("--key", key)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag} {path}: no such file")
        username = password = None
        if "://" in text:
            parts = urlsplit(text)
            if parts.scheme not in PORTS or not parts.hostname:
                raise ConfigError(
                    f"fleet address {_hidden(text)!r}: expected mqtt:// or mqtts://"
                    "[user[:password]@]host[:port], or host:port"
                )
            try:
                port = parts.port or PORTS[parts.scheme]
            except ValueError as exc:
                raise ConfigError(f"fleet address {_hidden(text)!r}: {exc}") from None
            host, tls = parts.hostname, parts.scheme == "mqtts"
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password is not None else None
        else:
            (host, port), tls = parse_address(text), False
        if password is None and username is not None:
            password = os.environ.get(ENV_PASSWORD)
        tls = tls or cafile is not None or cert is not None
        config = BrokerConfig.model_validate(
            {"host": host, "port": port, "username": username, "tls": tls}
            | {"ca_file": cafile, "cert_file": cert, "key_file": key}
        )
        return cls(config, password)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _hidden(url: str) -> str:
    """The URL with its password replaced, for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def add_fleet_options(p: argparse.ArgumentParser) -> None:
    """--fleet, --cafile, --cert, --key: where the fleet's broker is and how to log in."""
    p.add_argument(
        "--fleet",
        help=f"the fleet's broker: host:port or mqtt[s]://[user[:password]@]host[:port] "
        f"(${ENV_ADDRESS}; default {DEFAULT_ADDRESS}; password also ${ENV_PASSWORD})",
    )
    p.add_argument("--cafile", type=Path, help=f"CA of the broker's certificate (${ENV_CA})")
    p.add_argument("--cert", type=Path, help=f"client certificate, for TLS (${ENV_CERT})")
    p.add_argument("--key", type=Path, help=f"the client certificate's key (${ENV_KEY})")


def fleet_of(args: argparse.Namespace) -> FleetBroker:
    """The fleet's broker from the options `add_fleet_options` added."""
    return FleetBroker.of(args.fleet, cafile=args.cafile, cert=args.cert, key=args.key)
