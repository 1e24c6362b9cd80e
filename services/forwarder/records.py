"""What a queued message becomes for sinks that do not speak MQTT: JSON bodies and rows.

A result batch becomes one row per result (id, flow, t, time, model, outputs); an event one row.
"""

from __future__ import annotations

import json
from typing import Any

from services.forwarder.queue import EVENT, Row
from shared import codec
from shared.codec import Encoding
from shared.messages import Event, ResultBatch, iso


def decode(row: Row) -> ResultBatch | Event:
    data = codec.decode(row.payload, row.content_type)
    return Event.from_wire(data) if row.prio == EVENT else ResultBatch.from_wire(data)


def json_body(message: ResultBatch | Event) -> dict[str, Any]:
    """The message as plain JSON types, as it would travel with `encoding: json`."""
    body: dict[str, Any] = codec.to_jsonable(message.to_wire(Encoding.JSON))
    return body


def result_rows(batch: ResultBatch, *, outputs_as_text: bool = True) -> list[dict[str, Any]]:
    """One row per result; `outputs` a JSON text (for a SQL column) or a map."""
    columns = {name: codec.to_jsonable(values) for name, values in batch.outputs.items()}
    model = f"{batch.model.name}@{batch.model.version}"
    pack = json.dumps if outputs_as_text else _same
    return [
        {
            "id": rid,
            "flow": batch.flow,
            "t": int(t),
            "time": iso(int(t)),
            "model": model,
            "outputs": pack({name: col[i] for name, col in columns.items()}),
        }
        for i, (rid, t) in enumerate(zip(batch.ids, batch.t.tolist(), strict=True))
    ]


def _same(value: Any) -> Any:
    return value


def event_id(event: Event) -> str:
    return f"{event.flow}:{event.t}:{event.action}"


def event_row(event: Event) -> dict[str, Any]:
    return {
        "id": event_id(event),
        "flow": event.flow,
        "t": event.t,
        "time": iso(event.t),
        "action": event.action,
        "decision": event.decision,
        "reason": event.reason,
        "result_id": event.result_id,
        "write": json.dumps(event.write) if event.write is not None else None,
    }
