"""One value per message, the signal named by its topic: what plant gateways send.

`site1/line2/pump3/temperature` with `23.4`, `"23.4"`, `true`, or `{"value": 23.4, "ts": ...}`.
"""

from __future__ import annotations

import re
from typing import Any

from services.mqtt_ingest.config import Input
from services.mqtt_ingest.mapping import _get, to_ns, to_quality
from services.mqtt_ingest.paths import parse_path
from shared.errors import PayloadError
from shared.messages import Quality

_PLACEHOLDER = re.compile(r"\{(\d+)\}")
_NAME_CACHE_MAX = 100_000  # topics remembered per input; a gateway has a few thousand
NAN = float("nan")


def to_value(raw: Any) -> float:
    """A JSON/msgpack scalar as a float: numbers, booleans, numeric strings; null is NaN."""
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, (int, float)):
        return float(raw)
    if raw is None:
        return NAN
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            pass
    raise PayloadError(f"value {raw!r} is not a number")


class TopicNamer:
    """Signal names from topics, remembered per topic (the template runs once per topic)."""

    def __init__(self, spec: Input) -> None:
        self.map = spec.signal_map or {}
        self.template = spec.signal
        filter_levels = spec.topic.split("/")
        self.wildcards = [i for i, part in enumerate(filter_levels) if part == "+"]
        self.cache: dict[str, str] = {}

    def name(self, topic: str) -> str:
        name = self.cache.get(topic)
        if name is None:
            name = self._resolve(topic)
            if len(self.cache) < _NAME_CACHE_MAX:
                self.cache[topic] = name
        return name

    def _resolve(self, topic: str) -> str:
        mapped = self.map.get(topic)
        if mapped is not None:
            return mapped
        if self.template is None:
            raise PayloadError("topic matches no entry of signal_map")
        levels = topic.split("/")
        name = _PLACEHOLDER.sub(
            lambda m: levels[self.wildcards[int(m.group(1)) - 1]], self.template
        )
        if not name or name.startswith("$") or any(c in name for c in "/+#"):
            raise PayloadError(f"signal name {name!r} from the topic is not a valid name")
        return name


class ValueReader:
    """(time ns, value, quality) of one message; compiled once per input."""

    def __init__(self, spec: Input) -> None:
        self.unit = spec.timestamp.unit
        self.value_path = parse_path(spec.value_path)
        self.ts_path = parse_path(spec.timestamp.path) if spec.timestamp.path else None
        self.q_path = parse_path(spec.quality_path) if spec.quality_path else None

    def read(self, data: Any, arrival_ns: int) -> tuple[int, float, int]:
        if not isinstance(data, dict):  # a bare value: the time is when it came
            value = to_value(data)
            return arrival_ns, value, Quality.GOOD if value == value else Quality.BAD
        value = to_value(_get(data, self.value_path, "value"))
        t = arrival_ns
        if self.ts_path is not None:
            t = to_ns(_get(data, self.ts_path, "timestamp"), self.unit)
        q = to_quality(_get(data, self.q_path, "quality")) if self.q_path else Quality.GOOD
        return t, value, Quality.BAD if value != value else q  # NaN is never a good reading
