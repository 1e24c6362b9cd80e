"""Site files for tests: a site.yaml with one Modbus source on the simulator and one flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

POINTS = [
    {"name": "suction_pressure", "address": 0, "type": "int16", "scale": 0.01},
    {"name": "discharge_pressure", "address": 1, "type": "int16", "scale": 0.01},
    {"name": "flow", "address": 2, "scale": 0.1},
    {"name": "motor_current", "address": 3, "scale": 0.1},
    {"name": "vibration", "address": 6, "scale": 0.01},
]
FEATURES = [p["name"] for p in POINTS]


def site_data(site: str, port: int, modbus_port: int = 5020, **extra: Any) -> dict[str, Any]:
    return {
        "site": site,
        "broker": {"host": "127.0.0.1", "port": port},
        "timings": {
            "status_interval_s": 0.5,
            "reconnect_initial_s": 0.05,
            "reconnect_max_s": 0.5,
        },
        "sources": [
            {
                "name": "plc1",
                "kind": "modbus",
                "device": {"host": "127.0.0.1", "port": modbus_port},
                "poll_ms": 100,
                "blocks": [{"unit": 1, "table": "input", "points": POINTS}],
            }
        ],
        "flows": ["flows/pump.yaml"],
        "supervisor": {"restart_initial_s": 0.2, "restart_max_s": 1.0, "stop_timeout_s": 5},
        **extra,
    }


def flow_data(model: str | None = "pump.onnx", **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "pump",
        "align": {
            "period_ms": 100,
            "max_delay_ms": 200,
            "features": [
                {"signal": f"plc1/{n}", "fill": "hold", "max_age_ms": 1000, "name": n}
                for n in FEATURES
            ],
        },
    }
    if model is not None:
        data["model"] = {"path": model}
    return {**data, **extra}


def write_site(root: Path, site: dict[str, Any], flow: dict[str, Any]) -> Path:
    (root / "flows").mkdir(parents=True, exist_ok=True)
    (root / "flows" / "pump.yaml").write_text(yaml.safe_dump(flow, sort_keys=False))
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path
