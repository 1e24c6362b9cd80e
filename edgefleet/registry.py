"""Every service `edgefleet run NAME` can start: the name and the module holding its `SPEC`.

Data-plane services live in `services/`; control-plane ones (the fleet service, the agent) in
`edgefleet/`, because they compose flows and sites. A module is imported only when its service
is asked for, so a build without a service's dependencies still runs the others.
"""

from __future__ import annotations

import importlib
from typing import Any

from shared.errors import ConfigError
from shared.service import ServiceSpec

SERVICES: dict[str, str] = {
    "mqtt-ingest": "services.mqtt_ingest.service",
    "modbus": "services.modbus.service",
    "opcua": "services.opcua.service",
    "sparkplug": "services.sparkplug.service",
    "aligner": "services.aligner.service",
    "inference": "services.inference.service",
    "actuator": "services.actuator.service",
    "forwarder": "services.forwarder.service",
    "fleet": "edgefleet.fleet.service",  # control plane: composes flows, so it lives in edgefleet/
}


def service_spec(name: str) -> ServiceSpec[Any]:
    """The `ServiceSpec` of service `name`; ConfigError for a name not in SERVICES."""
    if name not in SERVICES:
        raise ConfigError(f"unknown service {name!r}; known: {', '.join(sorted(SERVICES))}")
    spec = importlib.import_module(SERVICES[name]).SPEC
    if not isinstance(spec, ServiceSpec) or spec.name != name:
        raise TypeError(f"{SERVICES[name]}.SPEC is not the ServiceSpec of {name!r}")
    return spec
