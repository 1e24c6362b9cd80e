"""Operators' holds, kept in a small JSON file so a restart never releases what a person held.

The file is replaced atomically (temporary name, fsync, rename) on every hold and release,
before the command is carried out and answered: once an operator saw "done", the hold survives
SIGKILL and a power cut. Read once at start, before the first decision.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.files import remove_stale_temporaries, write_atomic
from shared.messages import iso

log = logging.getLogger(__name__)
FILE_VERSION = 1


@dataclass(frozen=True)
class Hold:
    value: bool | int | float | None  # None: the output is left as it was
    by: str
    at: int  # ns since the epoch
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "time": iso(self.at)}


class HoldStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.holds: dict[str, Hold] = {}

    def load(self) -> dict[str, Hold]:
        remove_stale_temporaries(self.path.parent)  # a write of a killed actuator
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            self.holds = {
                name: Hold(h["value"], h["by"], int(h["at"]), h.get("reason"))
                for name, h in data["holds"].items()
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # refusing to start is safer than starting with an operator's hold silently gone
            raise ConfigError(
                f"{self.path}: cannot read the holds file ({exc}); fix or remove it"
            ) from None
        return dict(self.holds)

    def set(self, action: str, hold: Hold | None) -> None:
        holds = dict(self.holds)
        if hold is None:
            holds.pop(action, None)
        else:
            holds[action] = hold
        body = {"v": FILE_VERSION, "holds": {n: asdict(h) for n, h in sorted(holds.items())}}
        write_atomic(self.path, json.dumps(body, indent=2).encode())
        self.holds = holds
