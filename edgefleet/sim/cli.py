"""`edgefleet sim`: run the plant simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from edgefleet.cli_errors import UsageError, cli_errors
from edgefleet.sim.faults import load_schedule
from edgefleet.sim.plant import PlantSimulator
from edgefleet.sim.replay import Replay

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet sim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--modbus-port", type=int, default=5020, help="Modbus TCP port; 0 = a free one")
    p.add_argument(
        "--modbus-framer",
        choices=("tcp", "rtu"),
        default="tcp",
        help="tcp: Modbus TCP (default); rtu: RTU frames over TCP, like a serial gateway",
    )
    p.add_argument("--opcua-port", type=int, default=4840, help="OPC UA port; 0 = a free one")
    p.add_argument("--no-modbus", action="store_true", help="serve OPC UA only")
    p.add_argument("--no-opcua", action="store_true", help="serve Modbus only")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--faults", metavar="SCHEDULE", help="YAML/JSON list of {start_s, end_s, kind}")
    p.add_argument("--labels-out", metavar="CSV", help="write fault labels (start, end, kind) here")
    p.add_argument("--replay", metavar="CSV", help="serve recorded signals from this CSV")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed factor (default 1)")
    p.add_argument("--mqtt", metavar="HOST:PORT", help="publish the 1 kHz vibration waveform here")
    p.add_argument("--vib-topic", default="plant/vib/pump1", help="topic of the waveform batches")
    p.add_argument("--log-level", default="INFO")
    return p


async def run(args: argparse.Namespace) -> int:
    faults = load_schedule(args.faults) if args.faults else []
    replay = Replay(args.replay, args.speed) if args.replay else None
    sim = PlantSimulator(
        seed=args.seed,
        faults=faults,
        modbus=not args.no_modbus,
        opcua=not args.no_opcua,
        host=args.host,
        modbus_port=args.modbus_port,
        modbus_framer=args.modbus_framer,
        opcua_port=args.opcua_port,
        replay=replay,
    )
    vib = None
    if args.mqtt:
        from edgefleet.sim.vibration import VibrationPublisher, parse_host_port

        vib = VibrationPublisher(sim, *parse_host_port(args.mqtt), args.vib_topic)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.labels_out:
        sim.write_labels(args.labels_out)  # the schedule now; injected faults added at exit
    async with sim:
        if vib is not None:
            await vib.start()
        log.info(
            "simulator running: modbus port %s, opcua %s, seed %d, %d scheduled faults",
            sim.modbus_port,
            sim.opcua_endpoint,
            args.seed,
            len(faults),
        )
        await stop.wait()
        log.info("stopping")
        if vib is not None:
            await vib.stop()
    if args.labels_out:
        n = sim.write_labels(args.labels_out)
        log.info("wrote %d labels to %s", n, args.labels_out)
    return 0


@cli_errors("edgefleet sim")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("asyncua", "pymodbus"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return asyncio.run(run(args))
    except (OSError, ValueError) as exc:  # a port taken, a faults file that does not parse
        raise UsageError(str(exc)) from None


if __name__ == "__main__":
    raise SystemExit(main())
