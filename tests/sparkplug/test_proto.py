"""The committed Sparkplug module is what protoc makes of the .proto; value and topic helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grpc_tools import protoc

from shared.errors import PayloadError, TopicError
from shared.sparkplug import BdSeqFile, Metric, next_seq, number, set_value, value_of
from shared.sparkplug import sparkplug_b_pb2 as pb
from shared.topics import SparkplugType, parse_sparkplug, sparkplug, sparkplug_filter
from tests.sparkplug.conftest import PROTO, Schema


def test_committed_module_is_protocs_output(tmp_path: Path) -> None:
    code = protoc.main(
        [
            "protoc",
            f"-I{PROTO.parent}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            PROTO.name,
        ]
    )
    assert code == 0
    for name in ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi"):
        fresh = (tmp_path / name).read_text()
        assert (PROTO.parent / name).read_text() == fresh, f"run `make sparkplug-proto`: {name}"


def test_the_schema_has_the_specifications_names(spb: Schema) -> None:
    assert pb.DESCRIPTOR.package == "org.eclipse.tahu.protobuf"
    assert spb.types["Double"] == pb.Double == 10
    assert spb.types["DateTimeArray"] == 34
    fields = {f.name: f.number for f in pb.Payload.Metric.DESCRIPTOR.fields}
    assert fields["alias"] == 2 and fields["boolean_value"] == 14 and fields["is_historical"] == 5


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        (pb.Int8, -5),
        (pb.Int16, -300),
        (pb.Int32, -70000),
        (pb.Int64, -(1 << 40)),
        (pb.UInt32, 4_000_000_000),
        (pb.UInt64, 1 << 63),
        (pb.Float, 1.5),
        (pb.Double, -2.25),
        (pb.Boolean, True),
        (pb.String, "running"),
    ],
)
def test_values_round_trip_through_their_fields(datatype: int, value: object) -> None:
    metric = Metric(name="m")
    set_value(metric, datatype, value)  # type: ignore[arg-type]
    wire = Metric.FromString(metric.SerializeToString())
    assert value_of(wire, datatype) == value


def test_a_zero_extended_int8_reads_signed_and_null_reads_none() -> None:
    metric = Metric(name="m", int_value=0xFB)  # -5 written by a device in 8 bits
    assert value_of(metric, pb.Int8) == -5
    null = Metric(name="m", is_null=True)
    assert number(null, pb.Double) is None
    assert number(Metric(name="s", string_value="x"), pb.String) is None
    with pytest.raises(PayloadError, match="not supported"):
        set_value(Metric(name="d"), pb.DataSet, 1)


def test_bdseq_persists_and_wraps(tmp_path: Path) -> None:
    state = tmp_path / "node.json"
    first = BdSeqFile(state)
    assert [first.next(), first.next()] == [0, 1]
    assert BdSeqFile(state).next() == 2  # a restart takes the next number
    state.write_text('{"bdseq": 255}')
    assert BdSeqFile(state).next() == 0
    assert next_seq(255) == 0
    state.write_text("{}")  # unreadable: a new start, said in the log
    assert BdSeqFile(state).next() == 0
    assert json.loads(state.read_text()) == {"bdseq": 0}


def test_sparkplug_topics() -> None:
    assert sparkplug("g", SparkplugType.NBIRTH, "n") == "spBv1.0/g/NBIRTH/n"
    assert sparkplug("g", SparkplugType.DDATA, "n", "d") == "spBv1.0/g/DDATA/n/d"
    assert sparkplug_filter("g") == "spBv1.0/g/+/+/#"
    parsed = parse_sparkplug("spBv1.0/g/DBIRTH/n/d")
    assert (parsed.group, parsed.type, parsed.node, parsed.device) == (
        "g",
        SparkplugType.DBIRTH,
        "n",
        "d",
    )
    for bad in ("spBv1.0/STATE/host", "spBv1.0/g/NDATA/n/d", "spBv1.0/g/DDATA/n", "x/g/NDATA/n"):
        with pytest.raises(TopicError):
            parse_sparkplug(bad)
    with pytest.raises(TopicError):
        sparkplug("g/h", SparkplugType.NBIRTH, "n")
