"""Fuzzed input: a million generated payloads per decoder, from valid messages mutated byte-wise
(flips, truncations, insertions, splices) and structure-wise (a member replaced by a value of
another type, dropped, or nested). Figure: crashes (anything but the project's own clear error
for bad input), and the growth of the process's peak memory.

Byte-wise mutation gives the volume (a million payloads take tens of seconds); hypothesis's
shrinking is for the properties in tests/, where each failure must be minimal.
"""

from __future__ import annotations

import resource
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.desired import accept
from edgefleet.flow import parse_flow
from faults.conftest import Figure, scaled
from shared import codec
from shared.contract import control_plane_examples, hot_path_examples
from shared.errors import EdgefleetError
from shared.messages import CONTROL_PLANE, HOT_PATH, DesiredState
from shared.signing import SigningKey

KEY = SigningKey.generate()


def each(decoders: list[Callable[[Any], Any]], payload: bytes, content_type: str) -> None:
    """Every decoder of the family on the payload, as a service of each kind would read it:
    each may accept it or refuse it with the project's error, nothing else."""
    wire = codec.decode(payload, content_type)
    refused: EdgefleetError | None = None
    for decode in decoders:
        try:
            decode(wire)
        except EdgefleetError as exc:
            refused = exc
    if refused is not None:
        raise refused


def hot_path(payload: bytes, content_type: str) -> None:
    each([c.from_wire for c in HOT_PATH.values()], payload, content_type)


def control_plane(payload: bytes, content_type: str) -> None:
    each([c.from_wire for c in CONTROL_PLANE.values()], payload, content_type)


def desired(payload: bytes, content_type: str) -> None:
    accept(codec.decode(payload, content_type), "plant1", [KEY.public], taken_revision=3)


FLOW = {
    "name": "pump",
    "align": {
        "period_ms": 100,
        "max_delay_ms": 250,
        "features": [
            {"signal": "plc1/p", "fill": "linear", "max_age_ms": 500},
            {"signal": "vib/x", "agg": "rms"},
        ],
    },
    "model": {"path": "m.onnx", "max_batch": 64},
    "actions": [
        {
            "name": "lamp",
            "when": "score > 0.8",
            "for_samples": 3,
            "write": {"source": "plc1", "table": "coil", "address": 5, "value": True},
        }
    ],
    "sinks": [{"kind": "sqlite", "path": "h.db"}],
}


def flow_file(payload: bytes, content_type: str) -> None:
    parse_flow(codec.decode(payload, content_type), "fuzz")


def seeds(target: str) -> list[Any]:
    if target == "hot path":
        return [wire for _, wire in hot_path_examples()]
    if target == "control plane":
        return [m.to_wire() for m in control_plane_examples()]
    if target == "desired state":
        [d] = [m for m in control_plane_examples() if isinstance(m, DesiredState)]
        return [KEY.sign({**d.to_wire(), "revision": 4, "signature": None})]
    return [FLOW]


TARGETS: dict[str, Callable[[bytes, str], None]] = {
    "hot path": hot_path,
    "control plane": control_plane,
    "desired state": desired,
    "flow file": flow_file,
}
ODD: list[Any] = [
    None,
    True,
    -1,
    2**70,
    1e308,
    float("nan"),
    "",
    "x" * 300,
    [],
    {},
    [[[]]],
    b"\x00",
    {"v": 1},
]


def mutate_structure(obj: Any, rng: np.random.Generator) -> Any:
    if isinstance(obj, dict) and obj:
        key = list(obj)[int(rng.integers(len(obj)))]
        out = dict(obj)
        roll = rng.random()
        if roll < 0.15:
            del out[key]
        elif roll < 0.6:
            out[key] = ODD[int(rng.integers(len(ODD)))]
        else:
            out[key] = mutate_structure(obj[key], rng)
        return out
    if isinstance(obj, list) and obj:
        i = int(rng.integers(len(obj)))
        return [*obj[:i], mutate_structure(obj[i], rng), *obj[i + 1 :]]
    return ODD[int(rng.integers(len(ODD)))]


def mutate_bytes(data: bytes, rng: np.random.Generator, other: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        roll = rng.random()
        pos = int(rng.integers(len(b) + 1))
        if roll < 0.4 and b:
            b[min(pos, len(b) - 1)] ^= 1 << int(rng.integers(8))
        elif roll < 0.6:
            del b[pos:]
        elif roll < 0.8:
            b[pos:pos] = rng.bytes(int(rng.integers(1, 9)))
        else:
            b[pos:] = other[int(rng.integers(len(other) + 1)) :]
    return bytes(b)


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_million_payloads_per_decoder(target: str, figure: Figure) -> None:
    n = scaled(1_000_000, least=10_000)
    fn, rng = TARGETS[target], np.random.default_rng(11)
    encoded = [
        codec.encode(s, enc)
        for s in seeds(target)
        for enc in ("msgpack", "json")
        if enc == "msgpack" or target != "hot path"  # hot-path JSON carries ISO times: big
    ]
    crashes: list[str] = []
    refused = 0
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for i in range(n):
        payload, ctype = encoded[i % len(encoded)]
        if i % 4 == 0:  # structure-aware: a valid encoding of a wrong message
            try:
                wire = mutate_structure(codec.decode(payload, ctype), rng)
                payload, ctype = codec.encode(wire, "msgpack" if i % 8 else "json")
            except (EdgefleetError, ValueError, TypeError, OverflowError):
                continue  # not encodable as it came out (NaN in JSON, ...): nothing to feed
        else:
            payload = mutate_bytes(payload, rng, encoded[(i + 1) % len(encoded)][0])
        try:
            fn(payload, ctype)
        except EdgefleetError:
            refused += 1
        except Exception:
            if len(crashes) < 5:
                crashes.append(f"{payload[:80]!r}: {traceback.format_exc(limit=3)}")
            else:
                crashes.append("")
    elapsed = time.perf_counter() - start
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    ok = not crashes and growth_mb < 200
    figure(
        f"fuzzed input: {target}",
        f"{n:,} generated payloads ({n / elapsed:,.0f}/s)",
        f"{len(crashes)} crashes, {refused:,} refused with a clear error, peak memory "
        f"+{growth_mb:.0f} MB",
        ok,
    )
    assert not crashes, "\n".join(crashes[:5])
    assert growth_mb < 200
