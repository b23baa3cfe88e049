"""`fstore dead-letters replay`: events dead-lettered while the registry lacked a field are stored once the schema
has it, with their original message ids and publish times; a second replay changes nothing; letters still
rejected are not written again. Real Redis, the DuckDB offline store, Beam's FnApiRunner."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
import redis
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from typer.testing import CliRunner

from fstore.cli import app
from fstore.ingest.replay import REASONS
from fstore.ingest.transforms import IngestEvents
from fstore.schema.attributes import routing_attributes
from fstore.settings import get_settings, load_settings
from fstore.store import FeatureStore
from tests.conftest import ROOT, SchemaCopy

NOW = datetime.now(UTC).replace(microsecond=0)


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def replay(*args: str, exit_code: int = 0) -> str:
    result = CliRunner().invoke(app, ["dead-letters", "replay", *args])
    assert result.exit_code == exit_code, result.output
    return result.output


def listed(*args: str) -> str:
    result = CliRunner().invoke(app, ["dead-letters", *args])
    assert result.exit_code == 0, result.output
    return result.output


def dead_letter_rows_on_disk(tmp_path: Path) -> int:
    """The dead-letter table's rows as written: reads keep one per message id, so a letter written again would
    not show in `dead_letters()`."""
    return sum(pq.read_metadata(f).num_rows for f in (tmp_path / "offline/_dead_letters").rglob("*.parquet"))


def stored_state(fs: FeatureStore, redis_url: str, tmp_path: Path) -> tuple[Any, ...]:
    """Everything a replay could change: the history, every online row (its value starts with the event and
    publish times the compare-and-set compares), the dead letters."""
    client = redis.Redis.from_url(redis_url)
    online = {key: client.get(key) for key in client.scan_iter()}
    client.close()
    history = fs.offline.history(fs.spec("user")).to_pylist()
    return history, online, fs.offline.dead_letters().to_pylist(), dead_letter_rows_on_disk(tmp_path)


def test_replay_stores_what_a_schema_change_fixed_and_a_second_replay_changes_nothing(
    tmp_path: Path, redis_url: str, schema_copy: SchemaCopy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FSTORE_DESCRIPTOR_SET", str(schema_copy.descriptor_set))
    get_settings.cache_clear()
    assert replay() == "no dead letters match\n"

    # A producer built from the schema with churn_score publishes while the job's registry lacks the field.
    producer = SchemaCopy(tmp_path / "producer")
    producer.add_user_field()
    newer = producer.registry().get("user")

    def message(message_id: str, user_id: int, minutes_ago: int, age: int, churn: float, published: int) -> Any:
        event = newer.message_class(user_id=user_id, age=age, churn_score=churn)
        event.event_time.FromDatetime(NOW - timedelta(minutes=minutes_ago))
        publish_time = NOW - timedelta(seconds=60 - published)
        return PubsubMessage(event.SerializeToString(), routing_attributes(newer), message_id, publish_time)

    messages = [
        message("m1", 1, 1, 31, 0.2, published=0),  # user 1's latest event, published before an older one
        message("m2", 1, 2, 30, 0.1, published=1),
        message("m3", 2, 1, 22, 0.5, published=2),
        message("m4", 0, 1, 40, 0.9, published=3),  # no key: still rejected once the field is known
    ]
    with BeamTestPipeline(runner="FnApiRunner") as p:
        _ = p | beam.Create(messages) | IngestEvents(load_settings())
    time.sleep(0.01)
    between = datetime.now(UTC)
    # And a backfill file with the new field: its line, and one that no schema change makes valid.
    lines = [
        json.dumps({"userId": "4", "eventTime": stamp(NOW), "age": 50, "churnScore": 0.7}),
        json.dumps({"userId": "5", "eventTime": stamp(NOW), "age": "fifty"}),
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    backfill = CliRunner().invoke(
        app, ["ingest", "backfill", "--entity", "user", "--input", str(tmp_path / "events.jsonl")]
    )
    assert "0 stored offline" in backfill.output and "2 dead letters" in backfill.output, backfill.output
    assert "6 dead letters; invalid_json: 2; unknown_fingerprint: 4" in listed()
    assert dead_letter_rows_on_disk(tmp_path) == 6

    # Before the schema changes, nothing can be stored: exit 1, and the dead-letter table does not grow.
    before = replay(exit_code=1)
    assert "6 dead letters matched: 0 stored, 6 still rejected (invalid_json: 2, unknown_fingerprint: 4)" in before
    assert "error: none of the 6 matching dead letters could be stored" in before
    assert listed().startswith("6 dead letters;") and dead_letter_rows_on_disk(tmp_path) == 6

    schema_copy.add_user_field()  # the fix: `fstore codegen` with the field
    registry = schema_copy.registry()
    assert registry.get("user").fingerprint == newer.fingerprint

    assert replay("--since", stamp(NOW + timedelta(hours=1))) == "no dead letters match\n"
    assert replay("--since", between.isoformat()) == (
        "2 dead letters matched: 1 stored, 1 still rejected (invalid_json: 1)\n"
    )
    assert replay("--reason", "unknown_fingerprint") == (
        "4 dead letters matched: 3 stored, 1 still rejected (missing_key: 1)\n"
    )
    with FeatureStore(load_settings(), registry=registry) as fs:
        spec = fs.spec("user")
        history = {r["message_id"]: r for r in fs.offline.history(spec).to_pylist()}
        backfill_id = next(i for i in history if i.startswith("backfill:"))
        assert sorted(history) == sorted(["m1", "m2", "m3", backfill_id])  # the original message ids
        assert {i: r["churn_score"] for i, r in history.items()} == {"m1": 0.2, "m2": 0.1, "m3": 0.5, backfill_id: 0.7}
        rows = fs.get_online("user", [1, 2, 4], features=["age", "churn_score"])
        assert [(r["age"], r["churn_score"]) if r else None for r in rows] == [(31, 0.2), (22, 0.5), (50, 0.7)]
        state = stored_state(fs, redis_url, tmp_path)
        assert state[3] == 6  # the letters still rejected were not written again

        # Replaying everything again stores nothing new, rewrites no online row, and adds no dead letter.
        assert replay() == "6 dead letters matched: 4 stored, 2 still rejected (invalid_json: 1, missing_key: 1)\n"
        assert stored_state(fs, redis_url, tmp_path) == state

    # The list shows every letter as before (`list` is the same); --outstanding only those not stored since.
    assert listed().startswith("6 dead letters; invalid_json: 2; unknown_fingerprint: 4\n")
    assert listed("list") == listed()
    outstanding = listed("--outstanding")
    assert outstanding.startswith("2 dead letters; invalid_json: 1; unknown_fingerprint: 1\n")
    assert "  m4  unknown_fingerprint" in outstanding and "m1" not in outstanding
    newest_first = [json.loads(line)["message_id"] for line in listed("--outstanding", "--json").splitlines()]
    assert newest_first[1] == "m4" and newest_first[0].startswith("backfill:") and newest_first[0] != backfill_id


def test_replay_refuses_bad_options_in_one_line(tmp_path: Path) -> None:
    def error(*args: str) -> str:
        result = CliRunner().invoke(app, ["dead-letters", *args])
        assert result.exit_code == 2, result.output  # a usage error, before anything is read
        return " ".join(result.output.replace("│", " ").split())

    assert "'yesterday' is not an ISO-8601 time" in error("replay", "--since", "yesterday")
    assert "'missing_keys' is not a reason code; one of event_time_out_of_range" in error(
        "replay", "--reason", "missing_keys"
    )
    # Before the subcommand it would be the list's option, and the replay would take every letter.
    assert "--reason: before `replay`" in error("--reason", "missing_key", "replay")
    assert replay("--since", "2020-01-01T00:00:00") == "no dead letters match\n"  # no offset is fine: UTC


def test_every_documented_reason_is_a_replay_reason() -> None:
    table = (ROOT / "docs/ingest.md").read_text().split("## Validation and dead letters")[1].split("\n\n")[2]
    documented = {code for row in table.splitlines()[2:] for code in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert documented == REASONS
