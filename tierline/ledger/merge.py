"""`tierline ledger merge`: combine the ledgers of several hosts or shards into one.

Generic over the schema, so migrations that add columns or tables keep working: every table is
copied by the columns the source and the destination share (read with PRAGMA table_info), in
foreign-key order. A run is the unit of merging. A run's rows are those of every table with a
`run_id` column; if the destination already holds the run with at least as many rows, the run
is skipped, else its rows there are replaced by the source's (a run still in progress when it
was last merged catches up). So merging the same ledger twice changes nothing.

An INTEGER PRIMARY KEY (``calls.id``, ``provider_batches.id``) is local to each file: rows get
new ids in the destination, and foreign keys to them (``provider_batch_jobs.batch``) follow.
Tables without a `run_id` are copied with INSERT OR IGNORE.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .migrations import NANOS_FROM_MICROS
from .store import Ledger

__all__ = ["MergeReport", "merge_ledgers"]


@dataclass
class MergeReport:
    runs_added: int = 0
    runs_updated: int = 0
    runs_unchanged: int = 0
    rows: Counter[str] = field(default_factory=Counter)  # rows written, by table
    ignored_tables: set[str] = field(default_factory=set)  # in a source, unknown here


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]  # shared by source and destination, minus a renumbered id
    rowid: str | None  # the INTEGER PRIMARY KEY column, renumbered on copy
    refs: dict[str, str]  # column -> table whose renumbered id it holds
    sources: tuple[str, ...]  # the SQL reading each of `columns` from the source


def _tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_%' ESCAPE '\\'"
    )
    return [r[0] for r in rows]


def _info(conn: sqlite3.Connection, table: str) -> list[tuple[str, str, int]]:
    """(name, type, pk position) of each column."""
    return [(r[1], r[2].upper(), r[5]) for r in conn.execute(f'PRAGMA table_info("{table}")')]


def _plan(src: sqlite3.Connection, dst: sqlite3.Connection) -> tuple[list[_Table], set[str]]:
    """The shared tables in foreign-key order (referenced tables first), and the ignored ones."""
    shared = [t for t in _tables(src) if t in set(_tables(dst))]
    ignored = set(_tables(src)) - set(shared)
    rowids: dict[str, str] = {}
    for table in shared:
        info = _info(dst, table)
        pks = [(name, kind) for name, kind, pk in info if pk]
        if len(pks) == 1 and pks[0][1] == "INTEGER":
            rowids[table] = pks[0][0]
    deps: dict[str, dict[str, str]] = {}
    for table in shared:
        deps[table] = {
            r[3]: r[2]
            for r in dst.execute(f'PRAGMA foreign_key_list("{table}")')
            if r[2] in rowids and rowids[r[2]] == (r[4] or rowids[r[2]])
        }
    ordered: list[str] = []
    while len(ordered) < len(shared):  # bounded: each pass places at least one table
        ready = [t for t in shared if t not in ordered and set(deps[t].values()) <= {*ordered, t}]
        ordered.extend(ready or [t for t in shared if t not in ordered])
    plan = []
    for table in ordered:
        src_cols = {name for name, _, _ in _info(src, table)}
        pairs = [
            (name, _source_column(table, name, src_cols))
            for name, _, _ in _info(dst, table)
            if name != rowids.get(table)
        ]
        shared_cols = [(name, expr) for name, expr in pairs if expr is not None]
        plan.append(
            _Table(
                table,
                tuple(n for n, _ in shared_cols),
                rowids.get(table),
                deps[table],
                tuple(e for _, e in shared_cols),
            )
        )
    return plan, ignored


def _source_column(table: str, name: str, src_cols: set[str]) -> str | None:
    """How to read destination column `name` from the source; None when it has no such data.
    A ledger from before migration m005 has micro-dollars where this one has nano-dollars."""
    if name in src_cols:
        return f'"{name}"'
    old = NANOS_FROM_MICROS.get((table, name))
    if old is not None and old[0] in src_cols:
        return f'"{old[0]}" * {old[1]}'
    return None


def _run_rows(conn: sqlite3.Connection, plan: list[_Table], run_id: str) -> int:
    return sum(
        conn.execute(f'SELECT COUNT(*) FROM "{t.name}" WHERE run_id = ?', (run_id,)).fetchone()[0]
        for t in plan
        if t.name != "runs" and "run_id" in t.columns
    )


def _copy(
    src: sqlite3.Connection,
    dst: sqlite3.Connection,
    table: _Table,
    where: str,
    args: Sequence[Any],
    ids: dict[str, dict[int, int]],
    verb: str = "INSERT",
) -> int:
    """Copy the rows of `table` matching `where`; renumber its id and remap references."""
    selected = ", ".join([*([f'"{table.rowid}"'] if table.rowid else []), *table.sources])
    names = ", ".join(f'"{c}"' for c in table.columns)
    insert = f'{verb} INTO "{table.name}" ({names}) VALUES ({", ".join("?" * len(table.columns))})'
    positions = {c: i for i, c in enumerate(table.columns)}
    count = 0
    for row in src.execute(f'SELECT {selected} FROM "{table.name}" {where}', args):
        values = list(row[1:] if table.rowid else row)
        for column, parent in table.refs.items():
            old = values[positions[column]] if column in positions else None
            if old is not None:
                if old not in ids.get(parent, {}):
                    raise UsageError(
                        f"{table.name}.{column} refers to a {parent} row of another run"
                    )
                values[positions[column]] = ids[parent][old]
        cursor = dst.execute(insert, values)
        if table.rowid:
            ids.setdefault(table.name, {})[row[0]] = int(cursor.lastrowid or 0)
        count += cursor.rowcount
    return count


def merge_ledgers(sources: Sequence[str | Path], destination: str | Path) -> MergeReport:
    """Merge every source ledger into `destination` (created if missing), in one transaction."""
    report = MergeReport()
    for source in sources:
        if not Path(source).is_file():
            raise UsageError(f"no ledger at {source}")
    with Ledger(destination) as book:
        dst = book.conn
        dst.execute("PRAGMA foreign_keys = OFF")  # ids are remapped by hand; checked below
        dst.execute("BEGIN IMMEDIATE")
        try:
            for source in sources:
                _merge_one(Path(source), dst, report)
            bad = dst.execute("PRAGMA foreign_key_check").fetchone()
            if bad is not None:
                raise UsageError(f"merge would break a reference in table {bad[0]}; nothing merged")
            dst.execute("COMMIT")
        except BaseException:
            dst.execute("ROLLBACK")
            raise
    return report


def _merge_one(source: Path, dst: sqlite3.Connection, report: MergeReport) -> None:
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        plan, ignored = _plan(src, dst)
        report.ignored_tables |= ignored
        by_run = [t for t in plan if t.name != "runs" and "run_id" in t.columns]
        for (run_id,) in src.execute("SELECT id FROM runs").fetchall():
            have = dst.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
            if have and _run_rows(dst, plan, run_id) >= _run_rows(src, plan, run_id):
                report.runs_unchanged += 1
                continue
            for table in reversed(by_run):
                dst.execute(f'DELETE FROM "{table.name}" WHERE run_id = ?', (run_id,))
            runs = next(t for t in plan if t.name == "runs")
            ids: dict[str, dict[int, int]] = {}
            _copy(src, dst, runs, "WHERE id = ?", (run_id,), ids, "INSERT OR REPLACE")
            for table in by_run:
                report.rows[table.name] += _copy(
                    src, dst, table, "WHERE run_id = ?", (run_id,), ids
                )
            report.runs_updated += bool(have)
            report.runs_added += not have
        for table in plan:
            if table.name != "runs" and table not in by_run:
                report.rows[table.name] += _copy(src, dst, table, "", (), {}, "INSERT OR IGNORE")
    finally:
        src.close()
