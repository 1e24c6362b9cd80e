"""The fault suite's harness: the tests' real-server fixtures, and one table of figures.

Each scenario calls `figure(scenario, done, figure, ok)` once; at the end the table is printed
and written to `var/faults/report.md` and `report.json` (docs/reliability.md keeps a copy).
Scale with `FAULTS_SCALE` (1 = the figures in docs/reliability.md; 0.1 for a quick look).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from shared import codec
from shared.messages import ResultBatch
from tests.conftest import base_config, broker, no_leftover_processes, probe, site
from tests.fleet.conftest import bucket, fleet, fleet_config, s3, shared_s3
from tests.forwarder.conftest import cloud
from tests.helpers import Probe
from tests.site.conftest import simulator

__all__ = [
    "base_config", "broker", "bucket", "cloud", "fleet", "fleet_config", "no_leftover_processes",
    "probe", "s3", "shared_s3", "simulator", "site",
]  # fmt: skip

REPORT = Path("var/faults")
SCALE = float(os.environ.get("FAULTS_SCALE", "1"))


def scaled(n: int, least: int = 1) -> int:
    return max(least, round(n * SCALE))


@dataclass
class Row:
    scenario: str
    done: str
    figure: str
    verdict: str


ROWS: list[Row] = []
Figure = Callable[[str, str, str, bool], None]


@pytest.fixture
def figure() -> Figure:
    def record(scenario: str, done: str, text: str, ok: bool) -> None:
        ROWS.append(Row(scenario, done, text, "pass" if ok else "FAIL"))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    lines = ["| scenario | done to it | figure | verdict |", "|---|---|---|---|"]
    lines += [f"| {r.scenario} | {r.done} | {r.figure} | {r.verdict} |" for r in ROWS]
    REPORT.mkdir(parents=True, exist_ok=True)
    (REPORT / "report.md").write_text("\n".join(lines) + "\n")
    (REPORT / "report.json").write_text(json.dumps([asdict(r) for r in ROWS], indent=2))
    terminalreporter.write_sep("=", f"fault suite (FAULTS_SCALE={SCALE:g})")
    for line in lines:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"written to {REPORT / 'report.md'}")


class ResultIds:
    """Result ids a probe received on one topic, each message decoded once (a scenario sees
    hundreds of thousands of results; decoding them all again per arrival is quadratic)."""

    def __init__(self, probe: Probe, topic: str) -> None:
        self.probe, self.topic = probe, topic
        self.ids: list[str] = []
        self._seen = 0

    def __call__(self) -> list[str]:
        messages = self.probe.received(self.topic)
        for m in messages[self._seen :]:
            batch = ResultBatch.from_wire(codec.decode(m.payload, m.content_type))
            self.ids.extend(batch.ids)
        self._seen = len(messages)
        return self.ids
