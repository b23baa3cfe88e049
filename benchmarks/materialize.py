"""`fstore materialize` benchmark: rebuild Redis from a 10M-row offline history, timed end to end.

    .venv/bin/python benchmarks/materialize.py                                # 10,000,000 rows, 1,000,000 users
    .venv/bin/python benchmarks/materialize.py --rows 1000000 --users 100000   # quick

Generates `user` v1 history straight into the embedded store's layout (one parquet segment per day over the
DAYS days before today, every user with rows/users of them, each at its own random time), compacted by the
store's own `compact`, as a backfill leaves it; the data is reused while its parameters and dates match.
Starts its own Redis (fstore.testing.RedisServer), runs `fstore materialize --entity user` against it in a
subprocess (so the peak RSS, ru_maxrss, is the command's own) with the embedded store's DuckDB memory limit
set to --memory-limit, then checks before printing that Redis holds one key per user and that each of
--sample random users' stored bytes and expiry are those of its brute-force latest row (read back from the
parquet files, deduplicated and ordered in Python, encoded through the message path).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR_SET = ROOT / "clients/registry/descriptor_set.binpb"
DAYS = 14  # inside the user entity's 30-day TTL: every user's latest row is live
DAY_US = 86_400_000_000


def generate(data: Path, rows: int, users: int) -> None:
    import duckdb

    start_date = datetime.now(UTC).date() - timedelta(days=DAYS)  # the history ends yesterday
    marker = data / "generated.json"
    params = {"rows": rows, "users": users, "start": str(start_date), "layout": 2}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        print(f"reusing data in {data}")
        return
    shutil.rmtree(data, ignore_errors=True)
    started = time.perf_counter()
    registry, store = _store(data, "4GB")
    spec = registry.get("user", 1)
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    start = f"TIMESTAMPTZ '{start_date} 00:00:00+00'"
    per_day = rows // DAYS
    for day in range(DAYS):
        first, last = day * per_day, (day + 1) * per_day if day < DAYS - 1 else rows
        partition = data / "offline" / "user_v1" / f"date={start_date + timedelta(days=day)}"
        partition.mkdir(parents=True)
        # i % users: every user has rows; hash() spreads event times over the day; ingest lags by 1-60 s.
        features = ", ".join(f"{_value_sql(f, 13 + 2 * n)} AS {f.name}" for n, f in enumerate(spec.features))
        con.execute(
            f"""COPY (
              SELECT (i % {users})::BIGINT AS {spec.key.name},
                {start} + to_microseconds({day * DAY_US} + shift) AS {spec.event_time.name},
                {start} + to_microseconds({day * DAY_US} + shift + lag) AS ingest_time,
                printf('%016d', i) AS message_id, {features}
              FROM (
                SELECT i, (hash(i * 7) % {DAY_US})::BIGINT AS shift, (1000000 + hash(i * 11) % 59000000)::BIGINT AS lag
                FROM range({first}, {last}) AS r(i)
              )
            ) TO '{partition / f"{day:032x}.parquet"}' (FORMAT parquet)"""
        )
    compacted = time.perf_counter()
    store.compact(spec)
    print(f"compacted in {time.perf_counter() - compacted:.1f} s (fstore compact)")
    marker.write_text(json.dumps(params))
    print(f"generated {rows:,} history rows for {users:,} users in {time.perf_counter() - started:.1f} s")


# Values of each kind of feature from the row number and a salt: a tenth of them null (unset optional fields),
# defaults among them, lists of 0 to 3 elements (of 16 for floats: an embedding), so the check below covers
# every presence rule and list shape.
_SCALARS = {
    "int32": "(hash(i * {s}) % 100)::INTEGER",
    "int64": "(hash(i * {s}) % 100000)::BIGINT",
    "uint32": "(hash(i * {s}) % 100)::UINTEGER",
    "uint64": "(hash(i * {s}) % 100000)::UBIGINT",
    "float": "((hash(i * {s}) % 1000) / 1000.0)::FLOAT",
    "double": "(hash(i * {s}) % 100000) / 100.0",
    "bool": "hash(i * {s}) % 2 = 0",
    "string": "['DE', 'FR', 'US', 'GB', 'IT', ''][(1 + hash(i * {s}) % 6)::BIGINT]",
    "bytes": "encode((hash(i * {s}) % 1000)::VARCHAR)",
}


def _value_sql(field: Any, salt: int) -> str:
    value = _SCALARS[field.kind].format(s=salt)
    if field.repeated:
        element = _SCALARS[field.kind].format(s=f"{salt} + x")
        size = "16" if field.kind in ("float", "double") else f"(hash(i * {salt}) % 4)::BIGINT"
        return f"list_transform(range({size}), lambda x: {element})"
    return f"CASE WHEN hash(i * {salt + 1}) % 10 = 0 THEN NULL ELSE {value} END"


def _store(data: Path, memory_limit: str) -> tuple[Any, Any]:
    from fstore.schema.registry import Registry
    from fstore.store.offline.duckdb import DuckDBOfflineStore

    registry = Registry.from_descriptor_set(DESCRIPTOR_SET)
    store = DuckDBOfflineStore(data / "offline", registry, memory_limit=memory_limit, temp_directory=data / "spill")
    return registry, store


def run_materialize(data: Path, redis_url: str, memory_limit: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, the command's output) of `fstore materialize --entity user`."""
    (data / "fstore.yaml").write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSTORE_")}
    env |= {
        "FSTORE_CONFIG": str(data / "fstore.yaml"),
        "FSTORE_DATA_DIR": str(data / ".fstore"),
        "FSTORE_OFFLINE": f"duckdb:///{data / 'offline'}?memory_limit={memory_limit}&temp_directory={data / 'spill'}",
        "FSTORE_REDIS_URL": redis_url,
        "FSTORE_DESCRIPTOR_SET": str(DESCRIPTOR_SET),
    }
    command = [sys.executable, "-m", "fstore.cli", "materialize", "--entity", "user"]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=data, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"benchmark: fstore materialize failed:\n{proc.stdout}\n{proc.stderr}")
    # The command is the only child that has ended (Redis is still running): its peak is the children's.
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return seconds, peak_mb, proc.stdout.strip()


def check(data: Path, redis_url: str, users: int, sample: int) -> None:
    """Redis holds one key per user, and sampled users hold their brute-force latest row, byte for byte."""
    import duckdb
    import redis

    from fstore.schema.tables import arrow_schema
    from fstore.store.online.redis import encode_value, row_key

    registry, _ = _store(data, "1GB")
    spec = registry.get("user", 1)
    client = redis.Redis.from_url(redis_url)
    keys = client.dbsize()
    if keys != users:
        raise SystemExit(f"benchmark: Redis holds {keys:,} keys for {users:,} users")
    ids = random.Random(7).sample(range(users), min(sample, users))
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    files = f"'{data / 'offline' / 'user_v1' / '*' / '*.parquet'}'"
    columns = ", ".join(arrow_schema(spec).names)
    found = con.sql(
        f"SELECT {columns} FROM read_parquet({files}) WHERE user_id IN ({', '.join(map(str, ids))})"
    ).to_arrow_table()
    earliest: dict[str, dict[str, Any]] = {}  # each message id once: its earliest ingest
    for row in found.to_pylist():
        held = earliest.get(row["message_id"])
        if held is None or row["ingest_time"] < held["ingest_time"]:
            earliest[row["message_id"]] = row
    latest: dict[int, dict[str, Any]] = {}
    for row in earliest.values():
        order = (row["event_time"], row["ingest_time"], row["message_id"])
        held = latest.get(row["user_id"])
        if held is None or order > (held["event_time"], held["ingest_time"], held["message_id"]):
            latest[row["user_id"]] = row
    stored = client.mget([row_key(spec, i) for i in ids])
    expiries = [client.pexpiretime(row_key(spec, i).decode()) for i in ids]
    for user_id, value, expiry in zip(ids, stored, expiries, strict=True):
        row = dict(latest[user_id])
        event, ingest = _micros(row.pop("event_time")), _micros(row.pop("ingest_time"))
        del row["message_id"]
        message: Any = spec.message_class(**{k: v for k, v in row.items() if v is not None})
        message.event_time.FromMicroseconds(event)
        if value != encode_value(event, ingest, message):
            raise SystemExit(f"benchmark: user {user_id}: Redis holds {value!r}, not its latest row {row}")
        if expiry != event // 1_000 + spec.ttl_seconds * 1_000:
            raise SystemExit(f"benchmark: user {user_id} expires at {expiry}, not at event time + TTL")
    print(f"checked: {keys:,} keys; {len(ids):,} sampled users hold their latest row, byte for byte")


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="history rows")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/fstore-bench-materialize"))
    parser.add_argument("--memory-limit", default="1GB", help="the embedded store's DuckDB memory limit")
    parser.add_argument("--sample", type=int, default=1_000, help="users checked against a brute-force answer")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from fstore.testing import RedisServer

    generate(args.data, args.rows, args.users)
    with RedisServer() as server:
        seconds, peak_mb, output = run_materialize(args.data, server.url, args.memory_limit)
        print(output)
        check(args.data, server.url, args.users, args.sample)
    print(
        f"materialize: {args.rows:,} history rows -> {args.users:,} keys in {seconds:.2f} s "
        f"({args.rows / seconds:,.0f} rows/s), peak RSS {peak_mb:,.0f} MB, DuckDB memory_limit {args.memory_limit}"
    )


if __name__ == "__main__":
    main()
