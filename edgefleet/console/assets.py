"""The timeline's charting library, uPlot, from the npm registry: pinned here (version, tarball,
sha512 integrity as npm's lockfile writes it), fetched once by scripts/bootstrap
(`python -m edgefleet.console.assets`), checked, and unpacked into `vendor/` beside this module
(ignored by git). The console serves it from there: no Node toolchain, nothing from the internet
while it runs (plants run offline).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.cli_errors import Failed, cli_errors
from shared.errors import ProtocolError

HERE = Path(__file__).parent
LOCK = HERE / "uplot.lock.json"
VENDOR = HERE / "vendor"


def pin() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(LOCK.read_text())
    return data


def folder() -> Path:
    p = pin()
    return VENDOR / f"{p['name']}-{p['version']}"


@dataclass(frozen=True)
class Status:
    ok: bool
    message: str


def status() -> Status:
    p = pin()
    missing = [f for f in p["files"] if not (folder() / Path(f).name).is_file()]
    if missing:
        return Status(
            False,
            f"uPlot {p['version']} is not installed ({folder()} lacks {', '.join(missing)}): run "
            "scripts/bootstrap, or python -m edgefleet.console.assets, on a machine that reaches "
            "registry.npmjs.org; the timeline cannot draw without it",
        )
    return Status(True, f"uPlot {p['version']}")


def file(name: str) -> Path | None:
    """A vendored file by its base name, only the pinned ones."""
    names = {Path(f).name for f in pin()["files"]}
    path = folder() / name
    return path if name in names and path.is_file() else None


def check_integrity(data: bytes, integrity: str) -> None:
    algo, _, expected = integrity.partition("-")
    if algo != "sha512":
        raise ValueError(f"unsupported integrity algorithm {algo!r}")
    got = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != expected:
        raise ValueError(f"integrity mismatch: expected sha512-{expected}, got sha512-{got}")


def fetch(timeout: float = 60.0) -> Path:
    """Download, verify and unpack the pinned files; nothing is written unless they check."""
    p = pin()
    with urllib.request.urlopen(p["resolved"], timeout=timeout) as response:
        data = response.read()
    check_integrity(data, p["integrity"])
    out = folder()
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in p["files"]:
            extracted = tar.extractfile(member)
            if extracted is None:
                raise ValueError(f"{p['resolved']}: {member} is not a file")
            target = out / Path(member).name
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_bytes(extracted.read())
            tmp.replace(target)
    return out


@cli_errors("console assets")
def main() -> int:
    if status().ok:
        print(f"console assets: {status().message} in {folder()}")
        return 0
    try:
        out = fetch()
    except OSError as exc:  # the registry cannot be reached
        raise ProtocolError(f"fetching uPlot failed: {exc}") from None
    except (ValueError, tarfile.TarError) as exc:  # a digest or an archive that does not fit
        raise Failed(f"fetching uPlot failed: {exc}") from None
    print(f"console assets: uPlot {pin()['version']} verified and unpacked in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
