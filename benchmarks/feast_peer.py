"""Feast's point-in-time join over the same parquet as benchmarks/export.py (issue 16), run inside Feast's own
virtualenv (Feast is not a dependency of fstore). Prints one JSON line: seconds, cpu_seconds, rows, peak RSS.

    .fstore/feast-venv/bin/python benchmarks/feast_peer.py DATA MEMORY_LIMIT THREADS OUT
"""

import json
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    data, memory_limit, threads, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    import ibis
    import pyarrow.parquet as pq
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig
    from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String
    from feast.value_type import ValueType

    backend = ibis.duckdb.connect()
    backend.raw_sql(f"SET memory_limit='{memory_limit}'")
    backend.raw_sql(f"SET temp_directory='{data / 'spill'}'")
    if threads:
        backend.raw_sql(f"SET threads={threads}")
    ibis.set_backend(backend)
    repo = data / "feast_repo"
    repo.mkdir(exist_ok=True)
    config = RepoConfig(
        project="bench",
        registry=str(repo / "registry.db"),
        provider="local",
        offline_store={"type": "duckdb"},
        online_store={"type": "sqlite", "path": str(repo / "online.db")},
        repo_path=str(repo),
        entity_key_serialization_version=3,
    )
    store = FeatureStore(config=config)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    source = FileSource(
        path=str(data / "offline" / "user_v1" / "*" / "*.parquet"),
        timestamp_field="event_time",
        created_timestamp_column="ingest_time",
    )
    schema = [
        Field(name="age", dtype=Int32),
        Field(name="country", dtype=String),
        Field(name="is_premium", dtype=Bool),
        Field(name="lifetime_orders", dtype=Int64),
        Field(name="avg_order_value", dtype=Float64),
        Field(name="favorite_categories", dtype=Array(String)),
        Field(name="embedding", dtype=Array(Float32)),
    ]
    view = FeatureView(name="user", entities=[user], ttl=timedelta(days=30), schema=schema, source=source)
    store.apply([user, view])
    started, cpu = time.perf_counter(), _cpu()
    spine = pq.read_table(data / "spine.parquet").to_pandas()
    job = store.get_historical_features(
        entity_df=spine, features=[f"user:{f.name}" for f in schema], full_feature_names=True
    )
    job.table.to_parquet(out)
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    rows = pq.ParquetFile(out).metadata.num_rows
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rows": rows, "peak_rss_mb": rss}))


if __name__ == "__main__":
    main()
