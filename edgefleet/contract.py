"""Writes docs/wire-contract.md: shared/contract.py's messages, then the fleet's commands.

The fleet's command table lives with the fleet service (edgefleet/fleet, above shared/ in the
layers), so the whole document is composed here. `make contract` regenerates it; a test keeps
the committed file identical.
"""

from __future__ import annotations

import numpy as np

from edgefleet.fleet.commands import COMMANDS
from edgefleet.fleet.errors import CODES
from services.forwarder.sparkplug import event_updates, node_metrics, result_updates
from shared.codec import Encoding
from shared.contract import T, _json  # the one JSON layout of the document
from shared.contract import render as render_messages
from shared.messages import Event, FleetCommand, ModelRef, ResultBatch
from shared.sparkplug import BDSEQ
from shared.sparkplug import sparkplug_b_pb2 as pb
from shared.topics import SparkplugType, sparkplug

FLEET_INTRO = """\
## Fleet commands

Each is a `command` on `ef/fleet/commands` with `cmd` and `args` as below, answered with an
`answer`: `ok: true` and `result`, or `ok: false` and `error {code, message}`. Codes: {codes}.
Blobs never travel here: `library.upload_url` and `library.download_url` hand out presigned S3
URLs (PUT, GET) of short expiry; `library.commit` verifies the uploaded object before any
version exists.
"""


def fleet_commands_section() -> list[str]:
    # The command table lives with the fleet service (edgefleet/fleet), which composes flows;
    # the contract lists it, so the document covers every message on the wire.

    out = [FLEET_INTRO.replace("{codes}", ", ".join(f"`{c}`" for c in CODES))]
    for command in COMMANDS.values():
        request = ", ".join(f"`{n}`" for n in command.request.model_fields) or "none"
        result = ", ".join(f"`{n}`" for n in command.result.model_fields)
        example = FleetCommand(cmd=command.name, args=command.example)
        out += [
            f"### `{command.name}`\n",
            f"{command.doc}\n",
            f"Args: {request}. Result: {result}.\n",
            "```json",
            _json(example.to_wire(Encoding.JSON)),
            "```\n",
        ]
    return out


SPARKPLUG_INTRO = """\
## Sparkplug B (the `sparkplug` sink and source)

Topics of the Sparkplug B namespace (Sparkplug 3.0), payloads in its protobuf schema
(`shared/sparkplug/sparkplug_b.proto`, package `org.eclipse.tahu.protobuf`), not msgpack. The
sink presents the site as edge node `{edge_node_id}` (default: the site id) of `{group_id}`,
each flow a device; the source reads any edge node of its group. Details: docs/sparkplug.md.
"""


def sparkplug_section() -> list[str]:
    def type_name(datatype: int) -> str:
        return str(pb.DataType.Name(datatype))

    out = [SPARKPLUG_INTRO, "| message | topic | from → to |", "|---|---|---|"]
    who = {
        SparkplugType.NBIRTH: "sink → hosts; seq 0, bdSeq of the connection",
        SparkplugType.NDEATH: "the broker (the sink's will, QoS 1) → hosts; bdSeq only",
        SparkplugType.DBIRTH: "sink → hosts: one per flow, every metric with name and alias",
        SparkplugType.DDATA: "sink → hosts: changed metrics by alias",
        SparkplugType.NCMD: "hosts → sink: `Node Control/Rebirth`; source → edge nodes",
    }
    for kind, what in who.items():
        device = "{flow}" if kind in (SparkplugType.DBIRTH, SparkplugType.DDATA) else None
        topic = sparkplug("{group_id}", kind, "{edge_node_id}", device)
        out.append(f"| {kind.value} | `{topic}` | {what} |")
    out += ["", "Metrics of the edge node and of each flow device (example flow `pump`):", ""]
    out += ["| metric | Sparkplug type | in |", "|---|---|---|"]
    out.append(f"| `{BDSEQ}` | Int64 | NBIRTH, NDEATH |")
    for name, datatype, _ in node_metrics("{site}"):
        out.append(f"| `{name}` | {type_name(datatype)} | NBIRTH |")
    batch = ResultBatch(
        "pump",
        ModelRef("pump-ae", "3", "ab" * 32),
        np.array([T], np.int64),
        {"score": np.array([0.5], np.float32), "label": np.array(["ok"])},
        np.array([40.0], np.float32),
    )
    event = Event(flow="pump", action="stop-pump", decision="acted", reason="score > 0.8", t=T)
    for u in [*result_updates(batch)[0], *event_updates(event)]:
        out.append(f"| `{u.name}` | {type_name(u.datatype)} | DBIRTH, DDATA |")
    return out


def render() -> str:
    return "\n".join([render_messages(), *fleet_commands_section(), *sparkplug_section()])


if __name__ == "__main__":
    print(render(), end="")
