"""Plant simulator: a centrifugal pump station behind OPC UA and Modbus TCP servers."""

from edgefleet.sim.faults import load_schedule, write_labels
from edgefleet.sim.plant import PlantSimulator, free_port
from edgefleet.sim.pump import FAULT_KINDS, SIGNALS, Commands, Fault, PumpModel, PumpState
from edgefleet.sim.replay import Replay

__all__ = [
    "FAULT_KINDS",
    "SIGNALS",
    "Commands",
    "Fault",
    "PlantSimulator",
    "PumpModel",
    "PumpState",
    "Replay",
    "free_port",
    "load_schedule",
    "write_labels",
]
