"""What the pages show, computed from what the fleet and the live store answer: the side by side
rendering of a unified diff, and each node's model health from its inference statuses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgefleet.console.live import LiveStore
from shared.codec import decode
from shared.errors import EdgefleetError
from shared.topics import Kind

_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


@dataclass
class Row:
    kind: str  # same | changed | removed | added | hunk
    left_no: int | None = None
    left: str = ""
    right_no: int | None = None
    right: str = ""


def side_by_side(unified: str) -> list[Row]:
    """Rows of (old line, new line) from a unified diff: removed and added lines of one run are
    paired, the rest of the longer side stands alone."""
    rows: list[Row] = []
    removed: list[tuple[int, str]] = []
    added: list[tuple[int, str]] = []
    old = new = 0

    def flush() -> None:
        for i in range(max(len(removed), len(added))):
            left = removed[i] if i < len(removed) else None
            right = added[i] if i < len(added) else None
            kind = "changed" if left and right else ("removed" if left else "added")
            rows.append(
                Row(
                    kind,
                    left[0] if left else None,
                    left[1] if left else "",
                    right[0] if right else None,
                    right[1] if right else "",
                )
            )
        removed.clear()
        added.clear()

    for line in unified.splitlines():
        if line.startswith(("---", "+++")):
            continue
        hunk = _HUNK.match(line)
        if hunk:
            flush()
            old, new = int(hunk.group(1)), int(hunk.group(2))
            rows.append(Row("hunk", left=line))
        elif line.startswith("-"):
            removed.append((old, line[1:]))
            old += 1
        elif line.startswith("+"):
            added.append((new, line[1:]))
            new += 1
        elif line.startswith("\\"):
            continue  # "\ No newline at end of file"
        else:
            flush()
            text = line[1:] if line.startswith(" ") else line
            rows.append(Row("same", old, text, new, text))
            old += 1
            new += 1
    flush()
    return rows


def statuses(store: LiveStore, site: str) -> dict[str, dict[str, Any]]:
    """instance → its last status on `site`, as the live store saw it."""
    out: dict[str, dict[str, Any]] = {}
    for topic, parsed in store.site_topics(site, Kind.STATUS):
        last = store.topics[topic].last
        if not last or parsed.name is None:
            continue
        try:
            body = decode(last[-1].payload, last[-1].content_type)
        except EdgefleetError:
            continue
        if isinstance(body, dict):
            out[parsed.name] = body
    return out


def errors_count(store: LiveStore, site: str) -> int:
    return sum(store.topics[t].count for t, _ in store.site_topics(site, Kind.ERRORS))


def model_health(status: dict[str, Any]) -> dict[str, Any] | None:
    """What a page shows of one inference instance's status: model, drift, latency, rejections."""
    section = (status.get("health") or {}).get("inference")
    if not isinstance(section, dict):
        return None
    model = section.get("model") or {}
    health = model.get("health") or {}
    latency = health.get("latency_us") or {}
    rejected = health.get("rejected") or {}
    shadow = section.get("shadow") or None
    return {
        "model": f"{model.get('name')}@{model.get('version')}" if model.get("name") else None,
        "sha256": model.get("sha256"),
        "state": status.get("state"),
        "drift": health.get("drift") or {},
        "drift_max": health.get("drift_max"),
        "psi_max": health.get("psi_max"),
        "latency_p50_us": latency.get("p50"),
        "latency_p99_us": latency.get("p99"),
        "outputs": health.get("outputs") or {},
        "rejected": sum(v for v in rejected.values() if isinstance(v, int | float)),
        "failed_batches": section.get("failed_batches", 0),
        "script_errors": section.get("script_errors", 0),
        "results": section.get("results", 0),
        "shadow": f"{shadow.get('name')}@{shadow.get('version')}" if shadow else None,
    }


def site_health(store: LiveStore, site: str) -> dict[str, Any]:
    """Per flow the model health, every instance's state, the errors seen, the worst drift."""
    found = statuses(store, site)
    flows = {}
    for instance, status in found.items():
        health = model_health(status)
        if health is not None:
            flows[instance.removeprefix("inference-")] = health
    drifts = [h["drift_max"] for h in flows.values() if isinstance(h["drift_max"], int | float)]
    return {
        "instances": {name: s.get("state") for name, s in sorted(found.items())},
        "flows": flows,
        "drift_max": max(drifts) if drifts else None,
        "errors": errors_count(store, site),
    }
