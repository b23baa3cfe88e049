"""Backfill sources: files of entity events turned into the same records the Pub/Sub read produces, so the
backfill runs the very transforms the streaming job runs. JSONL is protobuf's JSON mapping of the entity
message, one object per line. (Parquet takes a columnar path: ingest/parquet.py.)"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.pvalue import PCollection
from google.protobuf import json_format
from google.protobuf.message import Message

from fstore.ingest.events import job_registry, launcher_registry_source
from fstore.ingest.jsonmap import JsonEventParser
from fstore.ingest.transforms import DEAD_LETTERS
from fstore.schema.attributes import ATTR_ENTITY, ATTR_VERSION, routing_attributes
from fstore.store.events import DeadLetter


@dataclass(frozen=True)
class SourceRecord:
    """Shaped like Beam's PubsubMessage, which is what IngestEvents reads; `data` is the original line (what a
    dead letter keeps) and `parsed` the message already decoded from it."""

    data: bytes
    attributes: dict[str, str]
    message_id: str
    parsed: Message
    publish_time: datetime | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Messages of descriptor-set classes do not pickle (Beam samples element sizes by encoding them).
        entity, version = self.attributes[ATTR_ENTITY], int(self.attributes[ATTR_VERSION])
        state = (self.data, self.attributes, self.message_id, self.parsed.SerializeToString(), self.publish_time)
        return (_rebuild_record, (entity, version, *state))


def _rebuild_record(
    entity: str, version: int, data: bytes, attributes: dict[str, str], message_id: str, parsed: bytes, publish: Any
) -> SourceRecord:
    message = job_registry().get(entity, version).message_class.FromString(parsed)
    return SourceRecord(data, attributes, message_id, message, publish)


def backfill_message_id(payload: bytes) -> str:
    """Deterministic from the line: running the same backfill twice stores nothing twice."""
    return "backfill:" + hashlib.sha256(payload).hexdigest()[:32]


class _JsonLinesToRecordsFn(beam.DoFn):
    def __init__(self, entity: str, version: int) -> None:
        self.entity, self.version = entity, version
        self.registry_source = launcher_registry_source()

    def setup(self) -> None:
        self.spec = job_registry(self.registry_source).get(self.entity, self.version)
        self.parser = JsonEventParser(self.spec)
        self.attributes = routing_attributes(self.spec)

    def process(self, line: str) -> Iterator[Any]:
        if not line.strip():
            return
        raw = line.encode()
        try:
            message = self.parser.parse(line)
        except json_format.ParseError as exc:
            yield pvalue.TaggedOutput(
                DEAD_LETTERS,
                DeadLetter(
                    data=raw,
                    attributes=dict(self.attributes),
                    reason="invalid_json",
                    detail=f"{self.spec.ref}: {exc}",
                    message_id=backfill_message_id(raw),
                    publish_time=None,
                    ingest_time=datetime.now(UTC),
                ),
            )
            return
        yield SourceRecord(raw, self.attributes, backfill_message_id(raw), message)


class ReadJsonEvents(beam.PTransform[PCollection[str], pvalue.DoOutputsTuple]):
    """JSONL files of one entity version -> records (`records`) | dead letters (`dead_letters`)."""

    def __init__(self, entity: str, version: int) -> None:
        super().__init__()
        self.entity, self.version = entity, version

    def expand(self, paths: PCollection[Any]) -> pvalue.DoOutputsTuple:
        lines = paths | "ReadLines" >> beam.io.ReadAllFromText()
        to_records = _JsonLinesToRecordsFn(self.entity, self.version)
        return lines | "JsonToRecords" >> beam.ParDo(to_records).with_outputs(DEAD_LETTERS, main="records")
