"""The fleet service's `/metrics` (fleet.yaml `metrics: {port: ...}`).

Nodes, deployments and convergence times are read from the fleet's SQLite at each scrape (a
read connection of its own: the fleet keeps no state elsewhere, so two fleet processes export
the same figures and a restart loses none; the convergence histogram never resets). Commands by
outcome are the process' own counters (they reset with it, as counters do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import sqlite_utils
from prometheus_client.core import Metric

from edgefleet.fleet.deploy import deployment_state
from edgefleet.fleet.nodes import presence
from edgefleet.fleet.store import Store
from shared.metrics import Family, Samples

NODE_STATES = ("online", "stale", "offline", "stopped", "unknown")
DEPLOYMENT_STATES = (
    "in_progress",
    "paused",
    "succeeded",
    "failed",
    "aborted",
    "superseded",
    "cancelled",
)
# From a node's desired state issued to that node reporting it applied.
CONVERGENCE_SECONDS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

FAMILIES = (
    Family("edgefleet_fleet_nodes", "gauge", "nodes by their agent's last state", ("state",)),
    Family("edgefleet_fleet_node_online", "gauge", "1 while the node's agent is online", ("node",)),
    Family(
        "edgefleet_fleet_node_revision",
        "gauge",
        "a node's desired and reported revisions",
        ("node", "kind"),
    ),
    Family("edgefleet_fleet_deployments", "gauge", "deployments by state", ("state",)),
    Family(
        "edgefleet_fleet_deployment_nodes", "gauge", "nodes of deployments by state", ("state",)
    ),
    Family(
        "edgefleet_fleet_convergence_seconds",
        "histogram",
        "per node and deployment: desired state issued to applied",
    ),
    Family("edgefleet_fleet_commands_total", "counter", "commands by outcome", ("outcome",)),
    Family("edgefleet_fleet_queued_commands", "gauge", "commands waiting for a worker"),
    Family("edgefleet_fleet_queued_observations", "gauge", "agent statuses and reports to store"),
)
NAMES = frozenset(f.name for f in FAMILIES)

_CONVERGENCE = """
SELECT (dn.updated_ns - x.issued_ns) / 1e9 AS s FROM deployment_nodes dn
JOIN desired x ON x.site = dn.site AND x.revision = dn.revision WHERE dn.state = 'applied'
"""


class FleetCollector:
    """Renders the fleet's tables and the service's counters for Prometheus."""

    def __init__(
        self,
        store: Store,
        counters: Callable[[], Mapping[str, int]],
        stale_after_s: float = 30.0,
    ) -> None:
        self.store = store
        self.counters = counters  # commands by outcome, queues: read from the service
        self.stale_after_s = stale_after_s  # an online node not heard from: nodes.presence

    def collect(self) -> Iterator[Metric]:
        s = Samples(FAMILIES)
        with self.store.read() as db:
            by_state = dict.fromkeys(NODE_STATES, 0)
            for r in db.query(
                "SELECT site, online, last_seen_ns, desired_revision, reported_revision FROM nodes"
            ):
                online, _ = presence(r, self.stale_after_s)
                by_state[online] = by_state.get(online, 0) + 1
                s.add("edgefleet_fleet_node_online", {"node": r["site"]}, online == "online")
                for kind in ("desired", "reported"):
                    labels = {"node": r["site"], "kind": kind}
                    s.add("edgefleet_fleet_node_revision", labels, r[f"{kind}_revision"])
            for state, n in by_state.items():
                s.add("edgefleet_fleet_nodes", {"state": state}, n)
            self._deployments(s, db)
            self._convergence(s, db)
        for key, n in self.counters().items():
            if key.startswith("queued_"):
                s.add(f"edgefleet_fleet_{key}", {}, n)
            else:
                s.add("edgefleet_fleet_commands_total", {"outcome": key}, n)
        yield from s.families()

    def _deployments(self, s: Samples, db: sqlite_utils.Database) -> None:
        counts: dict[str, dict[str, int]] = {}
        cancelled: dict[str, bool] = {}
        nodes = dict.fromkeys(("pending", "applied", "failed", "superseded", "cancelled"), 0)
        staged: dict[str, tuple[bool, bool]] = {}  # a staged deployment's (aborted, paused)
        rows = db.query(
            "SELECT d.id, d.cancelled_ns, r.aborted_ns, r.paused_ns, n.state, count(n.site) AS n "
            "FROM deployments d LEFT JOIN rollouts r ON r.deployment_id = d.id "
            "LEFT JOIN deployment_nodes n ON n.deployment_id = d.id GROUP BY d.id, n.state"
        )
        for r in rows:
            cancelled[r["id"]] = bool(r["cancelled_ns"])
            staged[r["id"]] = (bool(r["aborted_ns"]), bool(r["paused_ns"]))
            mine = counts.setdefault(r["id"], {})
            if r["state"] is not None:
                mine[r["state"]] = r["n"]
                nodes[r["state"]] = nodes.get(r["state"], 0) + r["n"]
        states = dict.fromkeys(DEPLOYMENT_STATES, 0)
        for deployment, mine in counts.items():
            aborted, paused = staged[deployment]
            state = deployment_state(cancelled[deployment], mine, aborted=aborted, paused=paused)
            states[state] = states.get(state, 0) + 1
        for state, n in states.items():
            s.add("edgefleet_fleet_deployments", {"state": state}, n)
        for state, n in nodes.items():
            s.add("edgefleet_fleet_deployment_nodes", {"state": state}, n)

    def _convergence(self, s: Samples, db: sqlite_utils.Database) -> None:
        cases = ", ".join(f"sum(s <= {b!r})" for b in CONVERGENCE_SECONDS)
        row = db.execute(
            f"SELECT count(*), coalesce(sum(s), 0), {cases} FROM ({_CONVERGENCE})"
        ).fetchone()
        count, total, *cumulative = row
        buckets = [
            (repr(b), float(c or 0)) for b, c in zip(CONVERGENCE_SECONDS, cumulative, strict=True)
        ]
        s.add_histogram(
            "edgefleet_fleet_convergence_seconds", {}, [*buckets, ("+Inf", count)], total
        )
