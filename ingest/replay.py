"""Replaying dead letters (`fstore dead-letters replay`): once what rejected them is fixed (usually the schemas:
a field added and `fstore codegen` run), the stored rejects go through the streaming job's own step again
(`IngestEvents`: decode, validate, offline history, online compare-and-set), with the registry read from the
descriptor set when the replay starts.

Each letter keeps its original message id and publish time, so the offline history (one row per message id)
and the online compare-and-set (on event time, then publish time) make a second replay change nothing. A
letter still rejected is counted under its reason now, and not written to the dead-letter table again: it is
there already, and a replay must not grow the table. Nothing marks a replayed letter in the table (it stays
the record of what was rejected); `outstanding` tells the letters whose message id is now in the history.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf import json_format

from fstore.errors import FstoreError
from fstore.ingest.jsonmap import JsonEventParser
from fstore.schema.attributes import ATTR_ENTITY, ATTR_FINGERPRINT, ATTR_VERSION
from fstore.schema.registry import EntitySpec, Registry
from fstore.schema.tables import MESSAGE_ID
from fstore.store import FeatureStore

# Every reason the ingest job gives a dead letter (docs/ingest.md's table; a test keeps the two equal).
REASONS = frozenset(
    {
        "missing_attributes",
        "unknown_entity",
        "unknown_version",
        "unknown_fingerprint",
        "undecodable",
        "missing_key",
        "missing_event_time",
        "event_time_out_of_range",
        "too_large",
        "invalid_event",
        "invalid_json",
    }
)
# The backfill's message ids (`ingest.sources.backfill_message_id`, the parquet rows'): their letters keep the
# line, or the row, as JSON rather than the protobuf bytes a producer published.
BACKFILL_ID_PREFIX = "backfill:"


@dataclass(frozen=True)
class LetterMessage:
    """A dead letter as the message it was, shaped like what the ingest step reads of a Pub/Sub message (Beam's
    `PubsubMessage` refuses one with neither data nor attributes, which a dead letter may have)."""

    data: bytes
    attributes: dict[str, str]
    message_id: str
    publish_time: datetime | None


@dataclass(frozen=True)
class ReplayResult:
    matched: int
    stored: int  # valid now: in the offline history (by this replay or an earlier one), and compare-and-set online
    rejected: dict[str, int]  # reason -> how many are rejected still

    def summary(self) -> str:
        still = sum(self.rejected.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.rejected.items()))
        return f"{self.matched} dead letters matched: {self.stored} stored, {still} still rejected" + (
            f" ({reasons})" if reasons else ""
        )


def select(letters: Iterable[dict[str, Any]], reason: str | None, since: datetime | None) -> list[dict[str, Any]]:
    """The letters (rows of `OfflineStore.dead_letters()`) of `reason`, ingested at or after `since` (aware)."""
    return [
        d for d in letters if (reason is None or d["reason"] == reason) and (since is None or d["ingest_time"] >= since)
    ]


def outstanding(fs: FeatureStore, letters: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The letters whose message id is not in the offline history of the entity version they name: not stored
    since, by a replay or by the job. Reads the whole history of each entity version the letters name."""
    stored: set[str] = set()
    for entity, version in {(d["entity"], d["version"]) for d in letters}:
        spec = _spec_or_none(fs.registry, entity, version)
        if spec is not None:
            stored.update(fs.offline.history(spec).column(MESSAGE_ID).to_pylist())
    return [d for d in letters if d[MESSAGE_ID] not in stored]


def letter_messages(letters: Sequence[dict[str, Any]], registry: Registry) -> tuple[list[LetterMessage], Counter[str]]:
    """Each letter as the message the ingest step reads: its original bytes, attributes, message id and publish
    time; and the count, per reason, of those rejected before that step.

    A backfill's letter keeps JSON, not protobuf bytes: it is parsed with `registry`, as the backfill parses a
    line, and handed on encoded, with that schema's fingerprint (the one the bytes are now of); one that still
    does not parse is rejected here as `invalid_json`. A letter without a publish time (a backfill's: files
    have none) gets its ingest time instead: a second replay then brings the online compare-and-set the same
    (event time, publish time), which changes nothing, rather than a later one, which would rewrite the row."""
    messages: list[LetterMessage] = []
    rejected: Counter[str] = Counter()
    parsers: dict[str, JsonEventParser] = {}
    for letter in letters:
        attributes: dict[str, str] = json.loads(letter["attributes"])
        data = bytes(letter["data"])
        if letter[MESSAGE_ID].startswith(BACKFILL_ID_PREFIX):
            spec = _spec_or_none(registry, attributes.get(ATTR_ENTITY), attributes.get(ATTR_VERSION))
            # With no such entity version the bytes go on as they are, and the ingest step names the reason.
            if spec is not None:
                if spec.ref not in parsers:
                    parsers[spec.ref] = JsonEventParser(spec)
                try:
                    data = parsers[spec.ref].parse(data).SerializeToString()
                except (json_format.ParseError, ValueError):  # ValueError: bytes that are not UTF-8
                    rejected["invalid_json"] += 1
                    continue
                # Also makes a job whose registry predates the change (`Registry.load` is cached) reload it.
                attributes = {**attributes, ATTR_FINGERPRINT: spec.fingerprint}
        publish = letter["publish_time"] or letter["ingest_time"]
        messages.append(LetterMessage(data, attributes, letter[MESSAGE_ID], publish))
    return messages, rejected


def replay_dead_letters(
    reason: str | None = None, since: datetime | None = None, beam_args: Sequence[str] = ()
) -> ReplayResult:
    """Replay the dead letters of `reason` ingested at or after `since` (see the module's docstring) with the
    settings' stores and the registry of their descriptor set as it is now. `beam_args` are Beam pipeline
    options (a local batch runner unless one is named)."""
    from fstore.ingest.pipeline import run_replay  # Beam: imported here, so that listing letters stays quick

    with FeatureStore.from_config() as fs:
        fs.refresh_registry()  # a process that read the schemas before they changed takes up the new ones
        letters = select(fs.offline.dead_letters().to_pylist(), reason, since)
        registry, settings = fs.registry, fs.settings
    if not letters:
        return ReplayResult(0, 0, {})
    messages, rejected = letter_messages(letters, registry)
    stored = 0
    if messages:
        result = run_replay(settings, messages, beam_args)
        counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
        stored = counters.get("events_valid", 0)
        for name, value in counters.items():
            if name.startswith("dead_letters_") and value:
                rejected[name.removeprefix("dead_letters_")] += value
    return ReplayResult(len(letters), stored, dict(rejected))


def _spec_or_none(registry: Registry, entity: str | None, version: str | None) -> EntitySpec | None:
    try:
        return registry.get(entity or "", int(version or ""))
    except (FstoreError, ValueError):  # no such entity or version, or no version number
        return None
