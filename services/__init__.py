"""edgefleet services: one package each. `edgefleet run NAME` imports the module named here.

Each module exposes `NAME`, `Config` (its pydantic config model) and `async def main(config)`.
"""

SERVICES: dict[str, str] = {
    "mqtt-ingest": "services.mqtt_ingest.service",
    "modbus": "services.modbus.service",
    "opcua": "services.opcua.service",
    "aligner": "services.aligner.service",
    "inference": "services.inference.service",
    "actuator": "services.actuator.service",
    "forwarder": "services.forwarder.service",
    "fleet": "edgefleet.fleet.service",  # control plane: composes flows, so it lives in edgefleet/
}
