"""The independent Sparkplug B decoder of these tests: the .proto compiled by protoc at test
time into a descriptor set, loaded into a pool of its own; no code of the sink or the source."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

PROTO = Path(__file__).parents[2] / "shared" / "sparkplug" / "sparkplug_b.proto"


@dataclass(frozen=True)
class Schema:
    Payload: Any  # the message class
    types: dict[str, int]  # DataType name -> number

    def decode(self, payload: bytes) -> Any:
        return self.Payload.FromString(payload)

    def metrics(self, payload: bytes) -> dict[str, Any]:
        """Name -> metric (births name every metric)."""
        return {m.name: m for m in self.decode(payload).metrics}


def compile_schema() -> Schema:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sparkplug_b.desc"
        code = protoc.main(
            ["protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}", PROTO.name]
        )
        assert code == 0, "protoc could not compile sparkplug_b.proto"
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    payload = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload")
    )
    enum = pool.FindEnumTypeByName("org.eclipse.tahu.protobuf.DataType")
    return Schema(payload, {v.name: v.number for v in enum.values})


@pytest.fixture(scope="session")
def spb() -> Schema:
    return compile_schema()
