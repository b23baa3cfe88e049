"""`messages_to_table` (cached per-spec plan, small batches converted row-wise, timestamps built directly,
repeated fields read without a copy) builds exactly the table the plain conversion builds, for every kind
of field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
from google.protobuf.message import Message

from fstore.schema.registry import EntitySpec, FieldSpec
from fstore.schema.tables import TIMESTAMP, arrow_schema, arrow_type
from fstore.store.events import event_time_micros, field_reader
from fstore.store.offline.schema import ROW_WISE_MAX_ROWS, messages_to_table

F = descriptor_pb2.FieldDescriptorProto
PROTO_TYPES = {
    "int32": F.TYPE_INT32,
    "int64": F.TYPE_INT64,
    "uint32": F.TYPE_UINT32,
    "uint64": F.TYPE_UINT64,
    "float": F.TYPE_FLOAT,
    "double": F.TYPE_DOUBLE,
    "bool": F.TYPE_BOOL,
    "string": F.TYPE_STRING,
    "bytes": F.TYPE_BYTES,
}
VALUES: dict[str, list[Any]] = {
    "int32": [-(2**31), 7, 2**31 - 1],
    "int64": [-(2**63), 0, 2**63 - 1],
    "uint32": [0, 2**32 - 1],
    "uint64": [1, 2**64 - 1],
    "float": [-1.5, 0.25, 3.4e38],
    "double": [-1e300, 0.1, 5e-324],
    "bool": [True, False],
    "string": ["", "é", "日本"],
    "bytes": [b"", b"\x00\xff"],
}


def every_kind_spec(key_kind: str) -> EntitySpec:
    """An entity version with every kind a feature can have: plain (no presence), optional, and repeated
    scalars, and an optional timestamp."""
    file = descriptor_pb2.FileDescriptorProto(
        name="kinds.proto",
        package="fstore.entities.kinds.v1",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    message = file.message_type.add(name="Kinds")
    kinds: dict[str, str] = {}

    def add(name: str, kind: str, *, repeated: bool = False, optional: bool = False) -> None:
        kinds[name] = kind
        field = message.field.add(name=name, number=len(message.field) + 1)
        field.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
        if kind == "timestamp":
            field.type, field.type_name = F.TYPE_MESSAGE, ".google.protobuf.Timestamp"
        else:
            field.type = PROTO_TYPES[kind]
        if optional:
            field.proto3_optional, field.oneof_index = True, len(message.oneof_decl)
            message.oneof_decl.add(name=f"_{name}")

    add("id", key_kind)
    add("event_time", "timestamp")
    for kind in PROTO_TYPES:
        add(f"plain_{kind}", kind)
        add(f"optional_{kind}", kind, optional=True)
        add(f"repeated_{kind}", kind, repeated=True)
    add("seen_at", "timestamp")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    desc = pool.FindMessageTypeByName("fstore.entities.kinds.v1.Kinds")
    fields = [
        FieldSpec(
            name=fd.name,
            number=fd.number,
            kind=kinds[fd.name],
            repeated=fd.label == F.LABEL_REPEATED,
            has_presence=bool(fd.has_presence),
        )
        for fd in desc.fields
    ]
    return EntitySpec(
        name="kinds",
        version=1,
        full_name=desc.full_name,
        proto_file=file.name,
        key=fields[0],
        event_time=fields[1],
        features=tuple(fields[2:]),
        ttl_seconds=0,
        owner="",
        description="",
        fingerprint="0" * 16,
        descriptor=desc,
    )


def sample_messages(spec: EntitySpec) -> list[Message]:
    """A fully set message per value of each kind, plus an empty one (zeros, None, empty lists)."""
    messages = []
    for row in range(3):
        message: Any = spec.message_class(id=row + 1 if spec.key.kind == "int64" else f"k{row}")
        message.event_time.FromDatetime(datetime(2026, 3, 1, 12, row, tzinfo=UTC))
        message.event_time.nanos += 999  # sub-microsecond digits are truncated, not rounded
        for kind, values in VALUES.items():
            value = values[row % len(values)]
            setattr(message, f"plain_{kind}", value)
            setattr(message, f"optional_{kind}", value)
            getattr(message, f"repeated_{kind}").extend(values[: row + 1])
        message.seen_at.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
        messages.append(message)
    empty: Any = spec.message_class(id=0 if spec.key.kind == "int64" else "")
    return [*messages, empty]


def table_the_plain_way(
    spec: EntitySpec, messages: list[Message], ingest_times: list[int], message_ids: list[str]
) -> pa.Table:
    """The conversion before the per-call costs were cut: int64 columns cast to timestamps, every
    repeated field copied to a list, the schema built afresh."""
    schema = pa.schema(list(arrow_schema(spec)))
    columns = [
        pa.array([getattr(m, spec.key.name) for m in messages], type=schema.field(0).type),
        pa.array([event_time_micros(spec, m) for m in messages], type=pa.int64()).cast(TIMESTAMP),
        pa.array(list(ingest_times), type=pa.int64()).cast(TIMESTAMP),
        pa.array(list(message_ids), type=pa.string()),
    ]
    columns += [pa.array([field_reader(f)(m) for m in messages], type=arrow_type(f)) for f in spec.features]
    return pa.Table.from_arrays(columns, schema=schema)


@pytest.mark.parametrize("key_kind", ["int64", "string"])
def test_messages_to_table_is_the_plain_conversion(key_kind: str) -> None:
    spec = every_kind_spec(key_kind)
    assert {f.kind for f in spec.features} == {*PROTO_TYPES, "timestamp"}
    messages = sample_messages(spec)
    ingest = [1_772_000_000_000_000 + i for i in range(len(messages))]
    ids = [f"m{i}" for i in range(len(messages))]
    expected = table_the_plain_way(spec, messages, ingest, ids)
    for _ in range(2):  # the second call runs on the cached plan
        table = messages_to_table(spec, messages, ingest, ids)
        assert table.schema.equals(expected.schema, check_metadata=True)
        assert table.equals(expected)
        assert table.to_pylist() == expected.to_pylist()
    assert table.to_pylist()[-1]["optional_int32"] is None and table.to_pylist()[-1]["plain_int32"] == 0
    assert table.column("event_time").type == pa.timestamp("us", tz="UTC")
    for n in (0, 1):
        head = messages_to_table(spec, messages[:n], tuple(ingest[:n]), tuple(ids[:n]))
        assert head.equals(expected.slice(0, n)) and head.schema == expected.schema


@pytest.mark.parametrize("rows", [ROW_WISE_MAX_ROWS, ROW_WISE_MAX_ROWS + 1])
def test_row_wise_and_column_wise_build_the_same_table(rows: int) -> None:
    spec = every_kind_spec("int64")
    messages = (sample_messages(spec) * rows)[:rows]
    ingest = list(range(rows))
    ids = [f"m{i}" for i in range(rows)]
    table = messages_to_table(spec, messages, ingest, ids)
    expected = table_the_plain_way(spec, messages, ingest, ids)
    assert table.schema.equals(expected.schema, check_metadata=True) and table.equals(expected)


def test_arrow_schema_is_cached_per_spec() -> None:
    spec = every_kind_spec("int64")
    assert arrow_schema(spec) is arrow_schema(spec)
    assert arrow_schema(spec) != arrow_schema(every_kind_spec("string"))
