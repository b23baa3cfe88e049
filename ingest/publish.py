"""`fstore publish`: entity events from a JSONL file, published with the generated client of their version."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from ingest.jsonmap import JsonEventParser
from store.errors import FstoreError
from store.registry import EntitySpec


class EventFileError(FstoreError):
    """A line of an events file is not a valid event; the message names the line."""


def publisher_class(entity: str, version: int) -> Any:
    module = importlib.import_module(f"fstore.entities.{entity}.v{version}")
    return getattr(module, f"{entity.title().replace('_', '')}V{version}Publisher")


def read_events(path: Path, spec: EntitySpec, message_class: type[Any]) -> list[Any]:
    """Every event of the file, or an error naming the first bad line: nothing is published from a file that
    is not entirely valid, so a fix-and-rerun never publishes half of it twice."""
    if not path.is_file():
        raise EventFileError(f"{path}: no such file")
    parser = JsonEventParser(spec, message_class)
    event_time_field = spec.event_time.name
    messages = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                message = parser.parse(line)
            except json_format.ParseError as exc:
                raise EventFileError(f"{path}:{number}: {exc}") from None
            if not message.HasField(event_time_field):
                raise EventFileError(f"{path}:{number}: {event_time_field} is not set")
            messages.append(message)
    return messages


def publish_file(path: Path, spec: EntitySpec, topic: str, project: str) -> list[str]:
    cls = publisher_class(spec.name, spec.version)
    messages = read_events(path, spec, cls.MESSAGE)
    publisher = cls(topic, project=project)
    return list(publisher.publish_all(messages))
