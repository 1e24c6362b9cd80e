"""`edgefleet record --raw`: a flow's raw reading batches (or any raw topics) to a recording.

Each batch is kept as it travelled (its readings' times, values and qualities) with the local
time it arrived, which is what the aligner's lateness rule uses: a replay of the recording takes
the same decisions the live aligner took. Bounded by `max_bytes` (readings × their stored size,
checked as row groups are written) and by the duration; a malformed message is counted and
skipped (it would have been rejected live too).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from edgefleet.replay.recording import Meta, RecordingWriter
from shared import codec
from shared.errors import EdgefleetError, TopicError
from shared.messages import ReadingBatch, now_ns
from shared.mqtt import BrokerSettings, MqttConnection, Received
from shared.topics import Kind, Topics, parse

log = logging.getLogger(__name__)
BYTES_PER_READING = 34  # the columns' raw size: what max_bytes bounds (compressed it is less)


@dataclass
class RawRecorded:
    path: Path
    batches: int
    readings: int
    rejected: int
    stopped_by: str  # duration | size | stop


def read_labels(path: Path | None) -> list[tuple[int, int, str]]:
    """Intervals of a labels CSV (`start_ns,end_ns,kind`, as `edgefleet sim --labels-out`)."""
    if path is None or not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [(int(r["start_ns"]), int(r["end_ns"]), r["kind"]) for r in csv.DictReader(fh)]


async def record_raw(
    out: Path,
    *,
    site: str,
    sources: list[str],
    settings: BrokerSettings,
    flow: str | None = None,
    prefix: str = "ef",
    duration_s: float | None = None,
    max_bytes: int | None = None,
    labels: Path | None = None,
    stop: asyncio.Event | None = None,
) -> RawRecorded:
    topics = Topics(site, prefix)
    filters = [topics.raw(s) for s in sources] if sources else [topics.all_of(Kind.RAW)]
    writer = RecordingWriter(out, Meta(site=site, flow=flow, topics=filters))
    done = stop or asyncio.Event()
    stopped_by = "stop"
    rejected = 0

    async def on_message(message: Received) -> None:
        nonlocal rejected, stopped_by
        arrival = now_ns()
        try:
            source = parse(message.topic).name
            batch = ReadingBatch.from_wire(codec.decode(message.payload, message.content_type))
            if batch.source != source:
                raise TopicError(f"batch of {batch.source!r} on the raw topic of {source!r}")
        except EdgefleetError as exc:
            rejected += 1
            log.warning("not recorded, from %s: %s", message.topic, exc)
            return
        writer.add(batch, arrival)
        if max_bytes is not None and writer.readings * BYTES_PER_READING >= max_bytes:
            stopped_by = "size"
            done.set()

    connection = MqttConnection(settings, on_message)
    for f in filters:
        await connection.subscribe(f)
    task = asyncio.create_task(connection.run(), name="record_mqtt_loop")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, done.set)
    try:
        try:
            await asyncio.wait_for(done.wait(), duration_s)
        except TimeoutError:
            stopped_by = "duration"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        writer.meta.labels = read_labels(labels)
        writer.close()
    return RawRecorded(out, writer.batches, writer.readings, rejected, stopped_by)


def main(
    flow_file: Path,
    out: Path,
    broker: str,
    site: str,
    duration_s: float | None,
    labels: Path | None,
    max_mb: float | None,
) -> int:
    from edgefleet.flow import load_flow
    from edgefleet.record import parse_broker

    flow = load_flow(flow_file)
    host, port = parse_broker(broker)
    sources = flow.align.sources
    print(
        f"recording raw readings of {', '.join(sources)} (flow {flow.name}) of site {site} from "
        f"{host}:{port} to {out}; Ctrl-C stops",
        file=sys.stderr,
    )
    done = asyncio.run(
        record_raw(
            out,
            site=site,
            sources=sources,
            flow=flow.name,
            settings=BrokerSettings(host=host, port=port, reconnect_max_s=2.0),
            duration_s=duration_s,
            max_bytes=None if max_mb is None else int(max_mb * 2**20),
            labels=labels,
        )
    )
    print(
        f"{done.readings} readings in {done.batches} batches written to {out} "
        f"(stopped by {done.stopped_by}; {done.rejected} malformed messages skipped)",
        file=sys.stderr,
    )
    return 0
