"""The fleet demo's summary: the figures of what happened, printed at the end and written to
{workdir}/summary.json (the same fields, for scripts and the test)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Summary:
    stations: list[str]
    console: str | None = None
    threshold: float | None = None
    converge_s: dict[str, float] = field(default_factory=dict)  # from the deploy, per station
    late: str | None = None
    late_converge_s: float | None = None  # from the late station's start
    rollout: dict[str, Any] = field(default_factory=dict)
    detection: dict[str, Any] = field(default_factory=dict)
    shadow: dict[str, Any] = field(default_factory=dict)
    rollback: dict[str, Any] = field(default_factory=dict)
    final_flows: dict[str, list[str]] = field(default_factory=dict)
    cloud_results: dict[str, int] = field(default_factory=dict)
    cloud_events: int = 0
    duration_s: float = 0.0
    interrupted: bool = False
    left_running: list[int] = field(default_factory=list)

    def json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.json() + "\n")
        tmp.replace(path)

    def text(self) -> str:
        how = "interrupted" if self.interrupted else "finished"
        lines = [f"edgefleet demo: {how} after {self.duration_s:.0f} s"]
        if self.converge_s:
            each = ", ".join(f"{s} {t:.1f} s" for s, t in self.converge_s.items())
            lines.append(f"time to converge (deploy → applied): {each}")
        if self.late_converge_s is not None:
            lines.append(
                f"late station {self.late}: converged {self.late_converge_s:.1f} s after it "
                "came online"
            )
        d = self.detection
        if d:
            cloud, reset = d.get("cloud_event_s"), d.get("lamp_reset_s")
            lines.append(
                f"{d['fault']} at {d['site']}: detected after {d['detected_s']:.1f} s, alarm lamp "
                f"set after {d['lamp_s']:.1f} s, event at the cloud after "
                f"{_or_dash(cloud, '.1f')} s; lamp reset "
                + ("never" if reset is None else f"{reset:.1f} s after the fault ended")
            )
        sh = self.shadow
        if sh:
            corr, diff = sh.get("score_corr"), sh.get("score_diff_p99")
            lines.append(
                f"shadow {sh['model']}: {sh['compared']} samples compared, score correlation "
                f"{_or_dash(corr, '.3f')}, score difference p99 "
                f"{_or_dash(diff, '.3f')}, {sh['decisions_differ']} decisions "
                f"differ; promoted as {sh['promoted']} ({sh['state']})"
            )
        rb = self.rollback
        if rb:
            others = {s: st for s, st in rb["nodes"].items() if s != rb["canary"]}
            lines.append(
                f"broken {rb['flow']}: canary {rb['canary']} {rb['nodes'].get(rb['canary'])} "
                f"after {rb['rolled_back_s']} s; deployment {rb['state']}; others: "
                + ", ".join(f"{s} {st}" for s, st in others.items())
            )
        if self.final_flows:
            runs = sorted({f for flows in self.final_flows.values() for f in flows})
            lines.append(f"at the end every station runs: {', '.join(runs) or 'nothing'}")
        if self.cloud_results:
            total = sum(self.cloud_results.values())
            each = ", ".join(f"{s} {n}" for s, n in sorted(self.cloud_results.items()))
            lines.append(
                f"results delivered to the cloud: {total} ({each}); events: {self.cloud_events}"
            )
        lines.append(
            "nothing left running"
            if not self.left_running
            else f"still running: {', '.join(map(str, self.left_running))}"
        )
        return "\n".join(lines)


def _or_dash(value: float | None, spec: str) -> str:
    """A figure the story may not have measured: `-` when it did not."""
    return "-" if value is None else format(value, spec)
