"""`fstore publish` (bad lines, creating topics on the emulator) and `fstore ingest backfill` (batch Beam job)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from typer.testing import CliRunner

from fstore.cli import app
from fstore.store import FeatureStore

NOW = datetime.now(UTC).replace(microsecond=0)


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def write_jsonl(path: Path, events: list[dict[str, object] | str]) -> Path:
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events))
    return path


@pytest.mark.emulator
def test_publish_reports_the_bad_line_and_publishes_nothing(tmp_path: Path, pubsub_env: str) -> None:
    events = write_jsonl(
        tmp_path / "events.jsonl",
        [
            {"userId": "1", "eventTime": stamp(NOW), "age": 30},
            {"userId": "2", "eventTime": stamp(NOW), "age": "thirty"},
            {"userId": "3", "eventTime": stamp(NOW)},
        ],
    )
    result = CliRunner().invoke(app, ["publish", "--entity", "user", "--file", str(events)])
    assert result.exit_code != 0
    assert f"{events}:2" in str(result.exception) + result.output

    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path("fstore-local", "fstore-ingest")
    pulled = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
    assert len(pulled.received_messages) == 0  # the valid first line was not published either

    good = write_jsonl(tmp_path / "good.jsonl", [{"userId": "1", "eventTime": stamp(NOW), "age": 30}])
    ok = CliRunner().invoke(app, ["publish", "--entity", "user", "--file", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "published 1 user/v1 events" in ok.output
    pulled = subscriber.pull(subscription=subscription, max_messages=10, timeout=10)
    [received] = pulled.received_messages
    assert received.message.attributes["fstore_entity"] == "user"
    subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])


def test_backfill_jsonl_and_parquet(tmp_path: Path, redis_url: str) -> None:
    lines: list[dict[str, object] | str] = []
    for user_id in range(1, 31):
        for k in (2, 0, 1):  # out of order within the file
            lines.append({"userId": str(user_id), "eventTime": stamp(NOW - timedelta(hours=k)), "age": 30 - k})
    lines += ["{not json", {"userId": "0", "eventTime": stamp(NOW)}, {"userId": "99"}]
    events = write_jsonl(tmp_path / "events.jsonl", lines)
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "backfill", "--entity", "user", "--input", str(events)])
    assert result.exit_code == 0, result.output
    assert "93 events read" not in result.output  # the bad JSON line never became an event
    assert "90 stored offline" in result.output and "3 dead letters" in result.output

    with FeatureStore.from_config() as fs:
        spec = fs.spec("user")
        rows = fs.get_online("user", list(range(1, 31)), features=["age"])
        assert [r["age"] if r else None for r in rows] == [30] * 30
        assert fs.offline.history(spec).num_rows == 90
        reasons = sorted(d["reason"] for d in fs.offline.dead_letters().to_pylist())
        assert reasons == ["invalid_json", "missing_event_time", "missing_key"]

    # The same file again changes nothing: message ids are derived from the content.
    again = runner.invoke(app, ["ingest", "backfill", "--entity", "user", "--input", str(events)])
    assert again.exit_code == 0, again.output
    with FeatureStore.from_config() as fs:
        assert fs.offline.history(fs.spec("user")).num_rows == 90

    # Parquet: one column per field, as the offline table has them.
    table = pa.table(
        {
            "user_id": pa.array([101, 102, 101], pa.int64()),
            "event_time": pa.array([NOW, NOW, NOW - timedelta(days=1)], pa.timestamp("us", tz="UTC")),
            "country": ["JP", "FR", "XX"],
            "favorite_categories": [["a"], [], ["b", "c"]],
        }
    )
    pq.write_table(table, tmp_path / "more.parquet")
    result = runner.invoke(app, ["ingest", "backfill", "--entity", "user", "--input", str(tmp_path / "more.parquet")])
    assert result.exit_code == 0, result.output
    with FeatureStore.from_config() as fs:
        rows = fs.get_online("user", [101, 102], features=["country", "favorite_categories"])
        assert [(r["country"], r["favorite_categories"]) for r in rows if r] == [("JP", ["a"]), ("FR", [])]
        assert fs.offline.history(fs.spec("user")).num_rows == 93


def test_backfill_parquet_rows_break_the_same_rules(tmp_path: Path, redis_url: str) -> None:
    table = pa.table(
        {
            "user_id": pa.array([1, 0, 2, 3], pa.int64()),
            "event_time": pa.array(
                [NOW, NOW, datetime(1990, 1, 1, tzinfo=UTC), NOW + timedelta(days=3)], pa.timestamp("us", tz="UTC")
            ),
            "age": pa.array([30, 31, 32, 33], pa.int32()),
        }
    )
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path)
    result = CliRunner().invoke(app, ["ingest", "backfill", "--entity", "user", "--input", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 stored offline" in result.output and "3 dead letters" in result.output
    with FeatureStore.from_config() as fs:
        letters = fs.offline.dead_letters().to_pylist()
        assert sorted(d["reason"] for d in letters) == [
            "event_time_out_of_range",
            "event_time_out_of_range",
            "missing_key",
        ]
        assert all(d["message_id"].startswith("backfill:") for d in letters)
        assert json.loads(next(d for d in letters if d["reason"] == "missing_key")["data"])["age"] == 31
    listed = CliRunner().invoke(app, ["dead-letters"])
    assert listed.exit_code == 0, listed.output
    assert "3 dead letters; event_time_out_of_range: 2; missing_key: 1" in listed.output
    only = CliRunner().invoke(app, ["dead-letters", "--reason", "missing_key", "--json"])
    assert [json.loads(line)["reason"] for line in only.output.splitlines()] == ["missing_key"]

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user_id": [1], "event_time": pa.array([NOW]), "height": [1.8]}), bad)
    result = CliRunner().invoke(app, ["ingest", "backfill", "--entity", "user", "--input", str(bad)])
    assert result.exit_code != 0
    assert "['height'] are not fields" in str(result.exception)


def test_backfill_rejects_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["ingest", "backfill", "--entity", "user", "--input", str(tmp_path / "no.jsonl")])
    assert result.exit_code == 2  # a usage error, before any Beam work
    assert "no such file" in " ".join(result.output.replace("│", " ").split())


def test_materialize_rebuilds_online_from_history_and_leaves_history_alone(tmp_path: Path, redis_url: str) -> None:
    """After the online keys are lost, `fstore materialize` brings back the latest row per key (and not an
    expired one); the history keeps its rows (a parquet round trip used to double it)."""
    lines: list[dict[str, object] | str] = []
    for user_id in range(1, 21):
        for k in (2, 0, 1):
            lines.append({"userId": str(user_id), "eventTime": stamp(NOW - timedelta(hours=k)), "age": 30 - k})
    lines.append({"userId": "21", "eventTime": stamp(NOW - timedelta(days=40)), "age": 5})  # past the 30-day TTL
    events = write_jsonl(tmp_path / "events.jsonl", lines)
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "backfill", "--entity", "user", "--input", str(events)]).exit_code == 0
    redis.Redis.from_url(redis_url).flushall()  # the online store loses every key
    result = runner.invoke(app, ["materialize", "--entity", "user"])
    assert result.exit_code == 0, result.output
    assert "from 61 history rows: 20 written online" in result.output and "1 past their TTL" in result.output
    with FeatureStore.from_config() as fs:
        rows = fs.get_online("user", list(range(1, 22)), features=["age"])
        assert [r["age"] if r else None for r in rows] == [30] * 20 + [None]
        assert fs.offline.history(fs.spec("user")).num_rows == 61
    again = runner.invoke(app, ["materialize", "--entity", "user"])
    assert "0 written online, 20 already newer online" in again.output  # idempotent


def test_a_backfill_that_stores_nothing_fails(tmp_path: Path, redis_url: str) -> None:
    """Every line rejected (here: `item` events loaded as `user`) is exit 1 and one line saying so, not a
    quiet success with only dead letters to show for it."""
    lines: list[dict[str, object] | str] = [
        {"itemId": f"i{n}", "eventTime": stamp(NOW), "price": 2.5} for n in range(5)
    ]
    events = write_jsonl(tmp_path / "items.jsonl", lines)
    result = CliRunner().invoke(app, ["ingest", "backfill", "--entity", "user", "--input", str(events)])
    assert result.exit_code == 1, result.output
    assert "every one of the 5 events was rejected and nothing was stored" in result.output
    assert "Is the file user/v1? Pass --version" in result.output
    with FeatureStore.from_config() as fs:
        assert fs.offline.dead_letters().num_rows == 5


@pytest.mark.parametrize("form", ["jsonl", "parquet"])
def test_a_backfill_feeds_aggregation_families(tmp_path: Path, redis_url: str, form: str) -> None:
    """Backfilled orders (weeks old: known at their event time, so never too late) reach `user_orders` online,
    and the online values equal an export at the same moment."""
    import random

    rng = random.Random(5)
    lines: list[dict[str, object] | str] = []
    for n in range(300):
        when = NOW - timedelta(minutes=rng.randint(1, 40 * 24 * 60))
        lines.append({"orderId": f"o{n}", "userId": str(rng.randint(1, 6)), "eventTime": stamp(when),
                      "amount": round(rng.uniform(1, 50), 2), "status": rng.choice(["paid", "shipped"])})  # fmt: skip
    path = write_jsonl(tmp_path / "orders.jsonl", lines)
    if form == "parquet":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        table = pa.table({
            "order_id": [r["orderId"] for r in rows], "user_id": pa.array([int(r["userId"]) for r in rows], pa.int64()),
            "event_time": pa.array([datetime.fromisoformat(r["eventTime"]) for r in rows], pa.timestamp("us", "UTC")),
            "amount": [r["amount"] for r in rows], "status": [r["status"] for r in rows],
        })  # fmt: skip
        path = tmp_path / "orders.parquet"
        pq.write_table(table, path)
    result = CliRunner().invoke(app, ["ingest", "backfill", "--entity", "order", "--input", str(path)])
    assert result.exit_code == 0, result.output

    users = list(range(1, 8))
    moment = datetime.now(UTC)
    with FeatureStore.from_config() as fs:
        online = fs.get_online("user_orders", users)
        spine = pa.table({"user_id": pa.array(users, pa.int64()), "event_timestamp": [moment] * len(users)})
        fs.export_training_set(spine, ["user_orders:*"], tmp_path / "train.parquet", progress=False)
    exported = pq.read_table(tmp_path / "train.parquet").to_pylist()
    assert sum(r["order_count_7d"] for r in online if r) > 20
    for row, live in zip(exported, online, strict=True):
        assert live is not None
        for name, value in live.items():
            if name == "user_id":
                continue
            want = row[f"user_orders__{name}"]
            assert value == pytest.approx(want, rel=1e-9) if isinstance(want, float) else value == want, name
