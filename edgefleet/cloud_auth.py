"""`edgefleet site add SITE`: a site's credentials and ACL on the cloud broker, and what the
site needs to reach it.

    edgefleet site add plant7 --auth-dir compose/cloud/auth --cloud cloud.example:8883

The auth folder is what compose/mosquitto/cloud.conf names (mounted at /mosquitto/config/auth):

- `passwd`: one user per site, user name = site id, through `mosquitto_passwd` (its own hash
  format, so no hashing of ours to get wrong);
- `acl`: written whole from `sites.json` each time (never edited by hand: one source), one block
  per site: publish only under `ef/{site}/...` and to `ef/fleet/commands`, read only what its
  bridge carries in (its own `desired` and debug session requests `ef/{site}/debug/session/+`)
  and the fleet's replies addressed to its agent (`ef/fleet/reply/{site}-agent`);
- `tls/`: a CA and the broker's certificate (made once; ECDSA P-256, which every
  OpenSSL build of mosquitto accepts), the CA's key kept here, mode 0600.

Why ACL files and not the dynamic-security plugin: the whole policy is two text files that a
review reads and a test checks, the plugin needs a running broker and its own admin client to
change anything, and a site's rights are all derived from its id (no per-site exceptions).
mosquitto reads both files again on SIGHUP (`docker compose kill -s HUP broker`), so a new or
removed site (`edgefleet site remove SITE`) takes effect without a restart: at the reload
mosquitto drops the revoked site's connections and refuses its reconnects (tested). When
`edgefleet cloud up --auth-dir` runs its broker on the folder (`broker.pid` names it), `site
add` and `site remove` send that SIGHUP themselves.

`edgefleet cloud up` enforces the same files on its own broker (`broker_settings`); its fleet
service and console log in as the user `fleet` (`ensure_fleet_user`: a name no site may take,
its password in `fleet.password`), whose ACL block, written here too, allows every topic.

For the site: `sites/{site}/` with its password (0600), the CA, and `bridge.conf` (the site
broker's MQTT v5 bridge over TLS: desired in, status and reported out) and `fleet.yaml` (the
site.yaml `fleet:` section). The topic prefix is `ef` unless `--prefix` says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.broker import bridge_config
from edgefleet.cli_errors import Failed, cli_errors
from shared.errors import ConfigError, EdgefleetError
from shared.files import write_atomic
from shared.topics import DEFAULT_PREFIX, FLEET_SITE, Topics, agent_replies

FLEET_USER = FLEET_SITE  # the cloud's own services' user: no site may take the name
FLEET_PASSWORD = "fleet.password"  # in the auth folder, made by `ensure_fleet_user`
BROKER_PID = "broker.pid"  # in the auth folder while `edgefleet cloud up`'s broker runs


def acl_text(sites: dict[str, Any], prefix: str, fleet_user: bool = False) -> str:
    lines = [
        "# Written by `edgefleet site add` from sites.json: do not edit (it is rewritten).",
        "# Each site: publish only under its own tree (and fleet commands), read only its own",
        "# desired state, debug session requests and the fleet's replies to its agent.",
    ]
    if fleet_user:  # `cloud up`'s fleet service and console; compose's use an internal listener
        lines += ["", f"user {FLEET_USER}", "topic readwrite #"]
    for site in sorted(sites):
        t = Topics(site, prefix)
        lines += [
            "",
            f"user {site}",
            f"topic write {prefix}/{site}/#",
            f"topic write {prefix}/fleet/commands",
            # what its bridge carries in (desired state, debug session requests), as it says
            *(f"topic read {pattern}" for pattern, way, _qos in t.bridged() if way == "in"),
            f"topic read {agent_replies(site, prefix)}",
        ]
    return "\n".join(lines) + "\n"


def write_acl(auth: Path, prefix: str) -> None:
    """The ACL, whole, from sites.json and whether the fleet's own user exists: the one writer."""
    registry = auth / "sites.json"
    sites: dict[str, Any] = json.loads(registry.read_text()) if registry.exists() else {}
    fleet_user = (auth / FLEET_PASSWORD).exists()
    write_atomic(auth / "acl", acl_text(sites, prefix, fleet_user).encode())


def _passwd(auth: Path, user: str, password: str) -> None:
    if shutil.which("mosquitto_passwd") is None:
        raise ConfigError("mosquitto_passwd is not installed (apt-get install mosquitto)")
    passwd = auth / "passwd"
    create = [] if passwd.exists() else ["-c"]
    subprocess.run(
        ["mosquitto_passwd", *create, "-b", str(passwd), user, password],
        check=True,
        capture_output=True,
    )
    os.chmod(passwd, 0o600)


def ensure_fleet_user(auth: Path, prefix: str = DEFAULT_PREFIX) -> Path:
    """The user `edgefleet cloud up`'s fleet service and console log in as (made once, its
    password in `fleet.password`, 0600; may read and write every topic); the ACL rewritten so
    it has its block. Returns the password file."""
    auth.mkdir(parents=True, exist_ok=True)
    path = auth / FLEET_PASSWORD
    if not path.exists():
        password = secrets.token_urlsafe(24)
        _passwd(auth, FLEET_USER, password)
        write_atomic(path, password.encode())
        os.chmod(path, 0o600)
    write_acl(auth, prefix)
    return path


def has_tls(auth: Path) -> bool:
    """Whether the folder has the CA and the broker's certificate (`ca.crt` is written last)."""
    return (auth / "tls" / "ca.crt").exists()


def broker_settings(auth: Path, tls_port: int) -> str:
    """mosquitto lines enforcing the auth folder's users and ACL on every listener, and a TLS
    listener on `tls_port` (all interfaces) when the folder has the CA and the broker's
    certificate (`tls/`, made by the first `site add`) and `tls_port` is not 0."""
    lines = [
        "allow_anonymous false",
        f"password_file {auth.resolve() / 'passwd'}",
        f"acl_file {auth.resolve() / 'acl'}",
    ]
    tls = auth.resolve() / "tls"
    if tls_port and has_tls(auth):
        lines += [
            f"listener {tls_port}",
            f"cafile {tls / 'ca.crt'}",
            f"certfile {tls / 'server.crt'}",
            f"keyfile {tls / 'server.key'}",
        ]
    return "\n".join(lines) + "\n"


def reload_broker(auth: Path) -> int | None:
    """SIGHUP to the broker `edgefleet cloud up` runs on this auth folder, if one runs: it reads
    passwd and acl again. Its pid, or None (then reload the broker yourself)."""
    try:
        pid = int((auth / BROKER_PID).read_text())
        if "mosquitto" not in psutil.Process(pid).name():
            return None  # a stale file whose pid now names another program
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError, psutil.Error):
        return None
    return pid


def bridge_text(site: str, cloud: str, prefix: str) -> str:
    """The site broker's bridge to the cloud (append to its mosquitto.conf): the one bridge
    `edgefleet up` writes (`edgefleet.broker.bridge_config`), with TLS against the fleet's CA
    and the site's credentials."""
    settings = (
        "bridge_cafile /mosquitto/config/tls/ca.crt",
        f"remote_username {site}",
        f"remote_password {{the content of sites/{site}/password}}",
    )
    return bridge_config(site, cloud, prefix=prefix, settings=settings)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    host: str | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]) if issuer else name
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650 if issuer is None else 825))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if host is not None:
        try:
            alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            alt = x509.DNSName(host)
        builder = builder.add_extension(x509.SubjectAlternativeName([alt]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ensure_tls(folder: Path, host: str) -> None:
    """A CA and the broker's certificate for `host`, made once."""
    if (folder / "ca.crt").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("edgefleet cloud CA", ca_key, None, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(host, server_key, ("edgefleet cloud CA", ca_key), host)
    for name, data, secret in (
        ("ca.key", _pem_key(ca_key), True),
        ("server.key", _pem_key(server_key), True),
        ("server.crt", server.public_bytes(serialization.Encoding.PEM), False),
        ("ca.crt", ca.public_bytes(serialization.Encoding.PEM), False),  # last: "made" marker
    ):
        write_atomic(folder / name, data)
        os.chmod(folder / name, 0o600 if secret else 0o644)


def add_site(auth: Path, site: str, cloud: str, prefix: str, labels: dict[str, str]) -> Path:
    """Register the site; the folder with what the site needs."""
    Topics(site, prefix)  # a valid topic id, or a clear error
    auth.mkdir(parents=True, exist_ok=True)
    registry = auth / "sites.json"
    sites: dict[str, Any] = json.loads(registry.read_text()) if registry.exists() else {}
    if site in sites:
        raise Failed(f"site {site} exists already in {registry}")
    password = secrets.token_urlsafe(24)
    _passwd(auth, site, password)
    sites[site] = {"labels": labels, "created": datetime.datetime.now(datetime.UTC).isoformat()}
    write_atomic(registry, json.dumps(sites, indent=1, sort_keys=True).encode())
    write_acl(auth, prefix)
    host = cloud.rpartition(":")[0] or cloud
    ensure_tls(auth / "tls", host)
    out = auth / "sites" / site
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "password", password.encode())
    os.chmod(out / "password", 0o600)
    shutil.copyfile(auth / "tls" / "ca.crt", out / "ca.crt")
    write_atomic(out / "bridge.conf", bridge_text(site, cloud, prefix).encode())
    port = int(cloud.rpartition(":")[2]) if ":" in cloud else 8883
    # the files' paths here; on the site's machine, where this folder's files are put
    broker = {
        "host": host, "port": port, "tls": True, "ca_file": str(out.resolve() / "ca.crt"),
        "username": site, "password_file": str(out.resolve() / "password"),
    }  # fmt: skip
    fleet = {
        "site": site,
        "labels": labels,
        "fleet": {"trusted_keys": ["<edgefleet keys show on the fleet side>"], "broker": broker},
    }
    write_atomic(out / "fleet.yaml", yaml.safe_dump(fleet, sort_keys=False).encode())
    return out


def remove_site(auth: Path, site: str, prefix: str) -> None:
    """Revoke the site: its user and its ACL block go (a reload makes it take effect)."""
    registry = auth / "sites.json"
    sites: dict[str, Any] = json.loads(registry.read_text()) if registry.exists() else {}
    if site not in sites:
        raise EdgefleetError(f"no site {site} in {registry}")
    subprocess.run(
        ["mosquitto_passwd", "-D", str(auth / "passwd"), site], check=True, capture_output=True
    )
    del sites[site]
    write_atomic(registry, json.dumps(sites, indent=1, sort_keys=True).encode())
    write_acl(auth, prefix)
    shutil.rmtree(auth / "sites" / site, ignore_errors=True)


def _reloaded(auth: Path) -> str:
    pid = reload_broker(auth)
    if pid is None:
        return "reload the broker: SIGHUP"
    return f"the broker of `edgefleet cloud up` reloaded: pid {pid}"


@cli_errors("edgefleet site")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgefleet site", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="op", required=True)
    add = sub.add_parser("add", help="a site's cloud broker credentials and ACL")
    add.add_argument("site")
    add.add_argument("--auth-dir", type=Path, default=Path("compose/cloud/auth"))
    add.add_argument("--cloud", default="cloud.example:8883", help="the cloud broker host:port")
    add.add_argument("--prefix", default=DEFAULT_PREFIX)
    add.add_argument("--labels", default="", help="k=v,k=v for the site's site.yaml")
    rm = sub.add_parser("remove", help="revoke a site: its user and ACL entries go")
    rm.add_argument("site")
    rm.add_argument("--auth-dir", type=Path, default=Path("compose/cloud/auth"))
    rm.add_argument("--prefix", default=DEFAULT_PREFIX)
    args = p.parse_args(argv)
    try:
        if args.op == "remove":
            remove_site(args.auth_dir, args.site, args.prefix)
            print(f"site {args.site} revoked in {args.auth_dir} ({_reloaded(args.auth_dir)})")
            return 0
        labels = dict(kv.split("=", 1) for kv in args.labels.split(",") if "=" in kv)
        out = add_site(args.auth_dir, args.site, args.cloud, args.prefix, labels)
    except subprocess.CalledProcessError as exc:  # mosquitto_passwd said no
        raise Failed(str(exc)) from None
    print(f"site {args.site}: user and ACL in {args.auth_dir} ({_reloaded(args.auth_dir)})")
    print(f"for the site: {out}/ (password, ca.crt, bridge.conf, fleet.yaml)")
    return 0
