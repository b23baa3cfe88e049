"""The spine of a training set: the labelled examples (entity keys + a timestamp) features are joined to.

Loaded as an Arrow table (a spine is the small side of the join, and fits in memory) and checked before
any join work starts, so a wrong file fails at once with a message naming the column, not minutes later
inside the engine.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from fstore.errors import FstoreError
from fstore.schema.registry import EntitySpec

# Added to the spine so output rows keep the spine's order, whatever order the engine joins in.
ROW_COLUMN = "__fstore_row"
_HASH_SLICE = 65_536


class SpineError(FstoreError, ValueError):
    """The spine cannot be joined: a missing file, a missing or mistyped column; the message names it."""


@dataclass(frozen=True)
class Spine:
    table: pa.Table  # the user's columns, unchanged, plus ROW_COLUMN (0, 1, 2, ... in input order)
    source: str | None  # the path it was read from, None for an in-memory table
    timestamp_column: str
    sha256: str
    # Earliest and latest spine timestamp (µs since the epoch, UTC); None for an empty spine.
    time_bounds: tuple[int, int] | None

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)

    @property
    def columns(self) -> list[str]:
        """The user's columns, in order (without ROW_COLUMN)."""
        return [c for c in self.table.column_names if c != ROW_COLUMN]


def load_spine(spine: Any, timestamp_column: str, entities: list[EntitySpec]) -> Spine:
    """Read and check a spine: a parquet path, a pyarrow Table or a pandas DataFrame."""
    source: str | None = None
    if isinstance(spine, (str, Path)):
        refuse_remote(str(spine), "--spine")
        path = Path(spine)
        if not path.is_file():
            raise SpineError(f"spine file {str(path)!r} does not exist")
        try:
            table = pq.ParquetFile(path).read()
        except (pa.ArrowInvalid, OSError) as exc:
            raise SpineError(f"spine file {str(path)!r} is not a readable parquet file: {exc}") from None
        source = str(path)
    elif isinstance(spine, pa.Table):
        table = spine
    elif _is_dataframe(spine):
        table = pa.Table.from_pandas(spine, preserve_index=False)
    else:
        raise SpineError(f"a spine must be a parquet path, a pyarrow Table or a pandas DataFrame, not {type(spine)}")
    table = table.replace_schema_metadata(None)
    check_columns(table.schema, timestamp_column, entities)
    nulls = table.column(timestamp_column).null_count
    if nulls:
        raise SpineError(f"spine column {timestamp_column!r} has {nulls} null timestamps; every row needs one")
    for spec in entities:
        check_keys(table.column(spec.key.name), spec)
    check_timestamps(table.column(timestamp_column), timestamp_column)
    digest = content_sha256(table)
    bounds = time_bounds(table.column(timestamp_column))
    table = table.append_column(ROW_COLUMN, row_numbers(table.num_rows))
    return Spine(table, source, timestamp_column, digest, bounds)


# A URL scheme (gs://, s3://, https://), also as a Path leaves it ("gs://b/t" becomes "gs:/b/t").
REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*:/")
INT64_MAX = 2**63 - 1
# Timestamps DuckDB and Python's datetime both hold (years 1 to 9999 overflow on the way in or out).
MIN_TIMESTAMP_MICROS = -62_135_596_800_000_000 + 86_400_000_000  # 0001-01-02
MAX_TIMESTAMP_MICROS = 253_402_214_400_000_000 - 86_400_000_000  # 9999-12-30


def row_numbers(rows: int) -> pa.Array:
    """0, 1, ... as int64, built from numpy's buffer: pa.array(range(n)) takes 0.1 s per million rows, and
    pa.array(ndarray) imports pandas (0.3 s) in a process that had not."""
    return pa.Array.from_buffers(pa.int64(), rows, [None, pa.py_buffer(np.arange(rows, dtype=np.int64))])


def refuse_remote(path: str, option: str) -> None:
    """Remote paths are not read or written yet: say so, rather than treat `gs://b/t` as a local folder."""
    if REMOTE.match(path):
        raise SpineError(
            f"{option} {path!r}: remote paths are not supported yet; copy the file locally "
            "(gsutil cp / gcloud storage cp) and pass the local path"
        )


def check_keys(column: pa.ChunkedArray, spec: EntitySpec) -> None:
    key = spec.key.name
    if column.null_count:
        raise SpineError(
            f"spine column {key!r} (key of {spec.name!r}) has {column.null_count} null ids; every row needs one"
        )
    if spec.key.kind == "int64" and len(column) and pa.types.is_unsigned_integer(column.type):
        largest = pc.max(column).as_py()
        if largest is not None and largest > INT64_MAX:
            raise SpineError(f"spine column {key!r} holds {largest}, which does not fit {spec.name!r}'s int64 key")


def check_timestamps(column: pa.ChunkedArray, name: str) -> None:
    bounds = time_bounds(column)
    if bounds is not None and (bounds[0] < MIN_TIMESTAMP_MICROS or bounds[1] > MAX_TIMESTAMP_MICROS):
        raise SpineError(
            f"spine column {name!r} has timestamps outside years 1 to 9999 "
            f"(from {bounds[0]:,} to {bounds[1]:,} µs after the epoch)"
        )


def time_bounds(column: pa.ChunkedArray) -> tuple[int, int] | None:
    """Naive timestamps are taken as UTC, as everywhere in fstore."""
    if len(column) == 0:
        return None
    micros = pc.cast(column, pa.timestamp("us", tz=column.type.tz), safe=False).cast(pa.int64())
    bounds = pc.min_max(micros).as_py()
    return int(bounds["min"]), int(bounds["max"])


def check_columns(schema: pa.Schema, timestamp_column: str, entities: list[EntitySpec]) -> None:
    if ROW_COLUMN in schema.names:
        raise SpineError(f"spine column {ROW_COLUMN!r} is reserved by fstore; rename it")
    if timestamp_column not in schema.names:
        raise SpineError(
            f"spine has no timestamp column {timestamp_column!r} (columns: {', '.join(schema.names)}); "
            "name it with --timestamp-column"
        )
    ts_type = schema.field(timestamp_column).type
    if not pa.types.is_timestamp(ts_type):
        raise SpineError(f"spine column {timestamp_column!r} must be a timestamp, not {ts_type}")
    for spec in entities:
        key = spec.key.name
        if key not in schema.names:
            raise SpineError(
                f"spine has no column {key!r}, the key of entity {spec.name!r} (columns: {', '.join(schema.names)})"
            )
        key_type = schema.field(key).type
        wanted = pa.types.is_integer if spec.key.kind == "int64" else _is_string
        if not wanted(key_type):
            kind = "an integer" if spec.key.kind == "int64" else "a string"
            raise SpineError(f"spine column {key!r} (key of entity {spec.name!r}) must be {kind}, not {key_type}")


def content_sha256(table: pa.Table) -> str:
    """A hash of the spine's schema and values, the same for the same data however it was chunked or read."""
    digest = hashlib.sha256()
    schema = table.schema.remove_metadata()
    digest.update(schema.serialize().to_pybytes())
    for start in range(0, max(table.num_rows, 1), _HASH_SLICE):
        piece = table.slice(start, _HASH_SLICE).combine_chunks()
        for column in piece.columns:
            for chunk in column.chunks:
                # Arrow IPC of one contiguous array is canonical for its values (slicing offsets are normalised).
                sink = pa.BufferOutputStream()
                with ipc.new_stream(sink, pa.schema([pa.field("v", chunk.type)])) as writer:
                    writer.write_batch(pa.record_batch([chunk], names=["v"]))
                digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _is_dataframe(value: Any) -> bool:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False
    return isinstance(value, pd.DataFrame)
