"""What a site's `/metrics` exports: every family, and how each status section maps onto them.

Counters come from the services' own cumulative counts in their retained status: a restarted
service counts from zero again, which Prometheus reads as a counter reset (`rate()` and
`increase()` handle it). Gauges are the status' latest values. Free-text reasons (the errors
topic) are not labels: their number is unbounded; the keyed counts a service keeps (Modbus
exception codes, the aligner's kinds of rejected readings, ...) are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.health import HistogramHealth, InferenceHealth, RuntimeHealth
from shared.metrics import Family, Samples

# Every per-instance family carries these; `flow` and `source` are empty where they do not apply
# (Prometheus drops empty labels), so `sum by (flow)` works on any family.
BASE = ("site", "instance", "service", "flow", "source")
Labels = dict[str, str]


def _f(name: str, kind: str, help: str, *extra: str) -> Family:
    return Family(f"edgefleet_{name}", kind, help, (*BASE, *extra))  # type: ignore[arg-type]


FAMILIES: tuple[Family, ...] = (
    # every instance: the runtime (shared/runtime.py) and the supervisor
    _f("instance_up", "gauge", "1 while the instance's last status is online"),
    _f("instance_state", "gauge", "1 for the instance's current state", "state"),
    _f("instance_start_time_seconds", "gauge", "when the instance's current run started"),
    _f("status_timestamp_seconds", "gauge", "when the instance last published its status"),
    _f("instance_restarts_total", "counter", "restarts by the supervisor since `edgefleet up`"),
    _f("messages_received_total", "counter", "MQTT messages received"),
    _f("messages_published_total", "counter", "MQTT messages published"),
    _f("messages_rejected_total", "counter", "input messages rejected (see the errors topic)"),
    _f("errors_total", "counter", "internal errors (handlers, stop hooks, model runs)"),
    _f("reconnects_total", "counter", "reconnections to the site broker"),
    _f("outbox_messages", "gauge", "messages buffered while the broker is away"),
    _f("outbox_dropped_messages_total", "counter", "buffered messages dropped (outbox full)"),
    _f("config_revision", "gauge", "revision of the config the instance runs"),
    _f("clock_skew_seconds", "gauge", "median device clock minus local clock, per source"),
    _f("process_cpu_seconds_total", "counter", "CPU time (user + system) of the process"),
    _f("process_resident_memory_bytes", "gauge", "resident memory of the process"),
    # adapters: modbus, opcua, mqtt-ingest
    _f("adapter_readings_total", "counter", "readings published by an adapter"),
    _f("adapter_bad_readings_total", "counter", "readings of quality bad"),
    _f("adapter_device_connected", "gauge", "1 while the adapter's device session is up"),
    _f("adapter_connects_total", "counter", "device connection attempts (modbus) or sessions"),
    _f("adapter_writes_total", "counter", "writes to the device"),
    _f("adapter_device_errors_total", "counter", "device errors by reason", "reason"),
    _f("adapter_stalls_total", "counter", "subscriptions found silent and rebuilt (opcua)"),
    _f("adapter_batches_total", "counter", "reading batches published (mqtt-ingest)"),
    # aligner
    _f("aligner_readings_total", "counter", "readings taken in"),
    _f("aligner_batches_total", "counter", "reading batches taken in"),
    _f("aligner_late_readings_total", "counter", "readings past the lateness allowance"),
    _f("aligner_rejected_readings_total", "counter", "readings not used, by reason", "reason"),
    _f("aligner_samples_total", "counter", "samples published"),
    _f("aligner_grid_points_total", "counter", "sample times reached"),
    _f("aligner_incomplete_samples_total", "counter", "sample times missing a feature"),
    _f("aligner_held_readings", "gauge", "readings held, waiting for their sample time"),
    _f("aligner_emitted_until_timestamp_seconds", "gauge", "newest sample time emitted"),
    # a window's percentiles, not a summary (no count, no sum): `percentile`, not `quantile`
    _f("aligner_emit_delay_seconds", "gauge", "due-to-published delay, recent", "percentile"),
    _f("aligner_ahead_skew_seconds", "gauge", "how far ahead a source's stamps are"),
    # inference
    _f("inference_samples_total", "counter", "samples taken in"),
    _f("inference_results_total", "counter", "result rows published"),
    _f("inference_runs_total", "counter", "model runs"),
    _f("inference_rejected_samples_total", "counter", "samples without a result", "reason"),
    _f("inference_failed_batches_total", "counter", "model runs that failed"),
    _f("inference_script_errors_total", "counter", "pre/postprocess script errors"),
    _f("inference_offloaded_runs_total", "counter", "model runs moved to a thread"),
    _f("inference_swaps_total", "counter", "model swaps by outcome", "outcome"),
    _f("inference_queued_samples", "gauge", "samples waiting for the next model run"),
    _f("inference_run_seconds", "histogram", "model run time per batch (live model)"),
    _f("inference_latency_seconds", "histogram", "per sample: arrival to result (live model)"),
    _f("inference_batch_size", "histogram", "samples per model run (live model)"),
    _f("inference_model_info", "gauge", "1 per model in service", "role", "model", "sha256"),
    _f("inference_drift_score", "gauge", "|live mean - train mean| / train std", "role", "feature"),
    _f("inference_drift_psi", "gauge", "population stability index vs training", "role", "feature"),
    # actuator
    _f("actuator_decisions_total", "counter", "decisions by outcome", "outcome"),
    _f("actuator_suppressed_rows_total", "counter", "result rows not acted on", "reason"),
    _f("actuator_late_answers_total", "counter", "adapter answers after their timeout"),
    _f("actuator_enabled", "gauge", "1 when writes are enabled"),
    _f("actuator_dry_run", "gauge", "1 in dry-run mode"),
    _f("actuator_action_active", "gauge", "1 while an action's condition holds", "action"),
    _f("actuator_action_held", "gauge", "1 while an operator holds an action", "action"),
    # forwarder, per sink
    _f("forwarder_queued_messages", "gauge", "messages queued for a sink", "sink"),
    _f("forwarder_queued_results", "gauge", "result rows queued for a sink", "sink"),
    _f("forwarder_queued_bytes", "gauge", "bytes queued for a sink", "sink"),
    _f("forwarder_oldest_age_seconds", "gauge", "age of the oldest queued message", "sink"),
    _f("forwarder_dead_letters", "gauge", "messages in a sink's dead-letter table", "sink"),
    _f("forwarder_sent_results_total", "counter", "result rows delivered", "sink"),
    _f("forwarder_sent_messages_total", "counter", "messages delivered", "sink"),
    _f("forwarder_dropped_results_total", "counter", "rows dropped (queue full)", "sink"),
    _f("forwarder_dropped_messages_total", "counter", "messages dropped (queue full)", "sink"),
    _f("forwarder_failed_sends_total", "counter", "send attempts that failed", "sink"),
    _f("forwarder_dead_lettered_messages_total", "counter", "refused, dead-lettered", "sink"),
    _f("forwarder_sink_healthy", "gauge", "1 while the sink's last send succeeded", "sink"),
    # agent
    _f("agent_revision", "gauge", "revision of the desired state the node runs"),
    _f("agent_state", "gauge", "1 for what the agent does now", "state"),
    _f("agent_cache_bytes", "gauge", "size of the agent's blob cache"),
    _f("agent_disk_free_bytes", "gauge", "free disk space where the cache is"),
)
NAMES = frozenset(f.name for f in FAMILIES)
MB = 2**20


def runtime(s: Samples, lb: Labels, h: RuntimeHealth) -> None:
    s.add("edgefleet_messages_received_total", lb, h.received)
    s.add("edgefleet_messages_published_total", lb, h.published)
    s.add("edgefleet_messages_rejected_total", lb, h.rejected)
    s.add("edgefleet_errors_total", lb, h.errors)
    s.add("edgefleet_reconnects_total", lb, h.reconnects)
    s.add("edgefleet_outbox_messages", lb, h.buffered)
    s.add("edgefleet_outbox_dropped_messages_total", lb, h.dropped)
    s.add("edgefleet_config_revision", lb, h.revision)
    for source, ms in h.clock_skew_ms.items():
        s.add("edgefleet_clock_skew_seconds", {**lb, "source": source}, ms / 1e3)


def _section(h: RuntimeHealth, name: str) -> dict[str, Any]:
    raw = (h.model_extra or {}).get(name)
    return raw if isinstance(raw, dict) else {}


def _n(d: Mapping[str, Any], key: str) -> float | None:
    """A number of a section, or None when missing or not a number (a newer/older service)."""
    v = d.get(key)
    return float(v) if isinstance(v, int | float) else None


def modbus(s: Samples, lb: Labels, d: dict[str, Any]) -> None:
    s.add("edgefleet_adapter_readings_total", lb, _n(d, "readings"))
    s.add("edgefleet_adapter_bad_readings_total", lb, _n(d, "bad"))
    if "device_down" in d:
        s.add("edgefleet_adapter_device_connected", lb, not d["device_down"])
    s.add("edgefleet_adapter_connects_total", lb, _n(d, "connects"))
    s.add("edgefleet_adapter_writes_total", lb, _n(d, "writes"))
    for reason, n in (d.get("errors") or {}).items():
        s.add("edgefleet_adapter_device_errors_total", {**lb, "reason": reason}, n)


def opcua(s: Samples, lb: Labels, d: dict[str, Any]) -> None:
    s.add("edgefleet_adapter_readings_total", lb, _n(d, "readings"))
    s.add("edgefleet_adapter_bad_readings_total", lb, _n(d, "bad"))
    if "connected" in d:
        s.add("edgefleet_adapter_device_connected", lb, bool(d["connected"]))
    s.add("edgefleet_adapter_connects_total", lb, _n(d, "sessions"))
    s.add("edgefleet_adapter_writes_total", lb, _n(d, "writes"))
    s.add("edgefleet_adapter_stalls_total", lb, _n(d, "stalls"))
    failed = d.get("failed_nodes") or {}
    if failed:
        s.add("edgefleet_adapter_device_errors_total", {**lb, "reason": "failed_node"}, len(failed))


def ingest(s: Samples, lb: Labels, d: dict[str, Any]) -> None:
    s.add("edgefleet_adapter_readings_total", lb, _n(d, "readings"))
    s.add("edgefleet_adapter_batches_total", lb, _n(d, "batches"))


def aligner(s: Samples, lb: Labels, d: dict[str, Any]) -> None:
    s.add("edgefleet_aligner_readings_total", lb, _n(d, "readings"))
    s.add("edgefleet_aligner_batches_total", lb, _n(d, "batches"))
    late_by = d.get("late_by_source") or {}
    for source, n in late_by.items():
        s.add("edgefleet_aligner_late_readings_total", {**lb, "source": source}, n)
    if not late_by:
        s.add("edgefleet_aligner_late_readings_total", lb, _n(d, "late"))
    for reason in ("ahead", "duplicate", "unusable"):
        s.add("edgefleet_aligner_rejected_readings_total", {**lb, "reason": reason}, _n(d, reason))
    s.add("edgefleet_aligner_samples_total", lb, _n(d, "published_samples"))
    s.add("edgefleet_aligner_grid_points_total", lb, _n(d, "grid_points"))
    s.add("edgefleet_aligner_incomplete_samples_total", lb, _n(d, "incomplete"))
    s.add("edgefleet_aligner_held_readings", lb, _n(d, "held_readings"))
    until = _n(d, "emitted_until_ns")
    s.add("edgefleet_aligner_emitted_until_timestamp_seconds", lb, until and until / 1e9)
    for key in ("p50", "p99"):
        ms = _n(d.get("emit_delay_ms") or {}, key)
        labels = {**lb, "percentile": key.removeprefix("p")}
        s.add("edgefleet_aligner_emit_delay_seconds", labels, ms and ms / 1e3)
    for source, ms in (d.get("ahead_skew_ms") or {}).items():
        s.add("edgefleet_aligner_ahead_skew_seconds", {**lb, "source": source}, ms / 1e3)


def _histogram(s: Samples, name: str, lb: Labels, h: HistogramHealth | None) -> None:
    if h is not None and h.bounds:
        s.add_histogram(name, lb, h.buckets(), h.sum)


def inference(s: Samples, lb: Labels, h: RuntimeHealth) -> None:
    inf = h.section("inference", InferenceHealth)
    if inf is None:
        return
    s.add("edgefleet_inference_samples_total", lb, inf.samples)
    s.add("edgefleet_inference_results_total", lb, inf.results)
    s.add("edgefleet_inference_runs_total", lb, inf.runs)
    rejected = (
        ("skipped_nan", inf.skipped_nan), ("nan_output", inf.nan_outputs),
        ("failed", inf.failed_samples),
    )  # fmt: skip
    for reason, n in rejected:
        s.add("edgefleet_inference_rejected_samples_total", {**lb, "reason": reason}, n)
    s.add("edgefleet_inference_failed_batches_total", lb, inf.failed_batches)
    s.add("edgefleet_inference_script_errors_total", lb, inf.script_errors)
    s.add("edgefleet_inference_offloaded_runs_total", lb, inf.offloaded_runs)
    for outcome, n in (("done", inf.swaps.done), ("refused", inf.swaps.refused)):
        s.add("edgefleet_inference_swaps_total", {**lb, "outcome": outcome}, n)
    s.add("edgefleet_inference_queued_samples", lb, inf.queued)
    _histogram(s, "edgefleet_inference_run_seconds", lb, inf.run_seconds)
    _histogram(s, "edgefleet_inference_latency_seconds", lb, inf.latency_seconds)
    _histogram(s, "edgefleet_inference_batch_size", lb, inf.batch_size)
    for role, served in (("live", inf.model), ("shadow", inf.shadow)):
        if served is None or served.sha256 is None:
            continue
        ref = f"{served.name}@{served.version}" if served.version else str(served.name)
        info = {**lb, "role": role, "model": ref, "sha256": served.sha256}
        s.add("edgefleet_inference_model_info", info, 1)
        for key, family in (("drift", "drift_score"), ("psi", "drift_psi")):
            for feature, value in (served.health.get(key) or {}).items():
                labels = {**lb, "role": role, "feature": feature}
                s.add(f"edgefleet_inference_{family}", labels, value)


def actuator(s: Samples, lb: Labels, d: dict[str, Any]) -> None:
    for outcome, n in (d.get("decisions") or {}).items():
        s.add("edgefleet_actuator_decisions_total", {**lb, "outcome": outcome}, n)
    for reason, n in (d.get("suppressed_rows") or {}).items():
        s.add("edgefleet_actuator_suppressed_rows_total", {**lb, "reason": reason}, n)
    s.add("edgefleet_actuator_late_answers_total", lb, _n(d, "late_answers"))
    if "enabled" in d:
        s.add("edgefleet_actuator_enabled", lb, bool(d["enabled"]))
    if "dry_run" in d:
        s.add("edgefleet_actuator_dry_run", lb, bool(d["dry_run"]))
    for action, a in (d.get("actions") or {}).items():
        if isinstance(a, dict):
            s.add("edgefleet_actuator_action_active", {**lb, "action": action}, a.get("active"))
            s.add("edgefleet_actuator_action_held", {**lb, "action": action}, a.get("held"))


# sink section key -> family (forwarder/queue.py's counters, persisted across restarts)
_SINK = {
    "queued": "forwarder_queued_messages",
    "queued_results": "forwarder_queued_results",
    "queued_bytes": "forwarder_queued_bytes",
    "oldest_age_s": "forwarder_oldest_age_seconds",
    "dead_letters": "forwarder_dead_letters",
    "sent": "forwarder_sent_results_total",
    "sent_messages": "forwarder_sent_messages_total",
    "dropped": "forwarder_dropped_results_total",
    "dropped_messages": "forwarder_dropped_messages_total",
    "failed": "forwarder_failed_sends_total",
    "dead_lettered_messages": "forwarder_dead_lettered_messages_total",
}


def forwarder(s: Samples, lb: Labels, h: RuntimeHealth) -> None:
    for key, d in (h.model_extra or {}).items():
        if not (key.startswith("sink_") and isinstance(d, dict)):
            continue
        labels = {**lb, "sink": key.removeprefix("sink_")}
        for field, family in _SINK.items():
            s.add(f"edgefleet_{family}", labels, _n(d, field))
        s.add("edgefleet_forwarder_sink_healthy", labels, d.get("last_error") is None)


AGENT_STATES = ("idle", "received", "downloading", "verifying", "activating")  # agent/state.py


def agent(s: Samples, lb: Labels, d: dict[str, Any]) -> None:
    s.add("edgefleet_agent_revision", lb, _n(d, "revision"))
    step = str(d.get("state", ""))
    for state in sorted({*AGENT_STATES, step} - {""}):
        s.add("edgefleet_agent_state", {**lb, "state": state}, state == step)
    cache, free = _n(d, "cache_mb"), _n(d, "disk_free_mb")
    s.add("edgefleet_agent_cache_bytes", lb, cache and cache * MB)
    s.add("edgefleet_agent_disk_free_bytes", lb, free and free * MB)


Section = Callable[[Samples, Labels, dict[str, Any]], None]
# health section -> renderer, for the sections that are plain mappings
SECTIONS: dict[str, Section] = {
    "modbus": modbus,
    "opcua": opcua,
    "ingest": ingest,
    "sparkplug": ingest,  # the sparkplug source counts readings and batches the same way
    "aligner": aligner,
    "actuator": actuator,
    "agent": agent,
}
