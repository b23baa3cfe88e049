"""A progress bar for a long DuckDB statement (an export), drawn from DuckDB's own query progress."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import duckdb

T = TypeVar("T")


def execute_with_progress(
    con: duckdb.DuckDBPyConnection, sql: str, total_rows: int, show: bool
) -> list[tuple[Any, ...]]:
    """Run `sql`; its result rows (a COPY's RETURN_STATS, say)."""
    return run_with_progress(con, lambda: con.execute(sql).fetchall(), total_rows, show)


def run_with_progress(
    con: duckdb.DuckDBPyConnection, work: Callable[[], T], total_rows: int, show: bool, label: str = "exporting"
) -> T:
    """`work()`, which runs one statement on `con`, under a bar of `total_rows` spine rows labelled `label`."""
    if not show:
        return work()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    error: list[BaseException] = []
    result: list[T] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("spine rows"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=None)  # a pulsing bar and the time elapsed until DuckDB can tell
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            done = completed_rows(con.query_progress(), total_rows)
            if done is not None:
                bar.update(task, total=total_rows, completed=done)
        bar.update(task, total=total_rows, completed=total_rows)
    if error:
        raise error[0]
    return result[0]


def completed_rows(percent: float, total_rows: int) -> int | None:
    """The spine rows to show as done for DuckDB's query progress, or None while it cannot tell: it reports
    -1, and 0 for the whole of a statement whose work sits behind a blocking operator (an export's ORDER BY),
    so a bar showing 0 of N rows until the end would say the export is stuck."""
    if percent <= 0:
        return None
    return int(total_rows * min(percent, 100.0) / 100)
