"""A progress bar for a long DuckDB statement (an export), drawn from DuckDB's own query progress."""

from __future__ import annotations

import threading
from typing import Any

import duckdb


def execute_with_progress(
    con: duckdb.DuckDBPyConnection, sql: str, total_rows: int, show: bool
) -> list[tuple[Any, ...]]:
    """Run `sql`; its result rows (a COPY's RETURN_STATS, say)."""
    if not show:
        return con.execute(sql).fetchall()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    error: list[BaseException] = []
    result: list[tuple[Any, ...]] = []

    def work() -> None:
        try:
            result.extend(con.execute(sql).fetchall())
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    columns = (
        TextColumn("exporting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("spine rows"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("export", total=total_rows)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            # DuckDB reports the running query's progress as a percentage (-1 when it cannot tell).
            percent = con.query_progress()
            if percent >= 0:
                bar.update(task, completed=int(total_rows * min(percent, 100.0) / 100))
        bar.update(task, completed=total_rows)
    if error:
        raise error[0]
    return result
