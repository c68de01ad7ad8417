"""Ledger migrations on a fresh database and on a v1 (m001-only) one."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from tierline.ledger.migrations import MIGRATIONS, migrate
from tierline.ledger.store import Ledger

CALLS = {
    "id": "INTEGER",
    "run_id": "TEXT",
    "job_id": "TEXT",
    "tier": "INTEGER",
    "backend": "TEXT",
    "model": "TEXT",
    "status": "TEXT",
    "input_tokens": "INTEGER",
    "output_tokens": "INTEGER",
    "cached_tokens": "INTEGER",
    "reasoning_tokens": "INTEGER",
    "cost_nanos": "INTEGER",  # m005: was cost_micros
    "price_source": "TEXT",
    "latency_s": "REAL",
    "attempt": "INTEGER",
    "error": "TEXT",
    "created_at": "TEXT",
    # m002
    "endpoint": "TEXT",
    "cache_write_tokens": "INTEGER",
    "price_version": "TEXT",
    "batch": "INTEGER",
    "baseline_nanos": "INTEGER",  # m005: was baseline_micros
    "busy_s": "REAL",
    "hop": "INTEGER",
    # m004
    "check_failed": "TEXT",
}
RUNS = {
    "id": "TEXT",
    "started_at": "TEXT",
    "finished_at": "TEXT",
    "command": "TEXT",
    "config_origin": "TEXT",
    "inputs": "TEXT",
    "jobs": "INTEGER",
    "ok": "INTEGER",
    "failed": "INTEGER",
    "cost_nanos": "INTEGER",  # m005
    "status": "TEXT",
    # m002
    "baseline_model": "TEXT",
    "baseline_nanos": "INTEGER",  # m005
    "unpriced_calls": "INTEGER",
    "skipped_budget": "INTEGER",
    "max_cost_micros": "INTEGER",
    "price_version": "TEXT",
    "tierline_version": "TEXT",
}


def columns(conn: sqlite3.Connection, table: str) -> dict[str, str]:
    return {row[1]: row[2] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_fresh_database_has_exact_columns() -> None:
    """A new ledger has exactly the documented columns and types, in every migration."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    applied = migrate(conn)
    assert applied == [m.__name__ for m in MIGRATIONS]
    assert applied[:2] == ["m001_initial", "m002_costs"]
    # later migrations add their own tables (m003) or named columns (m004, listed above)
    assert columns(conn, "calls") == CALLS
    assert columns(conn, "runs") == RUNS


def test_migrate_twice_applies_nothing() -> None:
    """Migrations are recorded by name and never run twice."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    assert migrate(conn) == []


def test_v1_database_upgrades_and_keeps_its_rows(tmp_path: Path) -> None:
    """A ledger written by the walking skeleton (m001 only) upgrades in place; old rows keep
    their data and get neutral defaults (no cache writes, not batch, hop 1, no baseline)."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE _tierline_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    MIGRATIONS[0](conn)  # m001_initial: the decorator keeps functions only in the list
    now = datetime.now(timezone.utc).isoformat()
    conn.execute("INSERT INTO _tierline_migrations VALUES ('m001_initial', ?)", (now,))
    conn.execute(
        "INSERT INTO runs (id, started_at, command, config_origin, inputs) "
        "VALUES ('r1', ?, 'run', 'test', 'a.jsonl')",
        (now,),
    )
    conn.execute(
        "INSERT INTO calls (run_id, job_id, backend, model, status, input_tokens, "
        "cost_micros, latency_s, created_at) VALUES ('r1', 'j', 'b', 'm', 'ok', 7, 42, 0.5, ?)",
        (now,),
    )
    conn.close()
    with Ledger(path) as ledger:
        row = ledger.conn.execute(
            "SELECT input_tokens, cost_nanos, cache_write_tokens, batch, hop, baseline_nanos "
            "FROM calls"
        ).fetchone()
        names = [r[0] for r in ledger.conn.execute("SELECT name FROM _tierline_migrations")]
        assert columns(ledger.conn, "calls") == CALLS
    assert row == (7, 42_000, 0, 0, 1, None)  # 42 micro-dollars, now in nano-dollars
    assert names[:2] == ["m001_initial", "m002_costs"]


def test_two_ledgers_open_one_new_file_at_once(tmp_path: Path) -> None:
    """Two processes creating the same ledger do not both apply a migration."""
    path = tmp_path / "shared.db"
    first = Ledger(path)
    second = Ledger(path)  # a second connection: migrations already recorded
    try:
        count = first.conn.execute("SELECT COUNT(*) FROM _tierline_migrations").fetchone()[0]
        assert count == len(MIGRATIONS)
        assert second.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        first.close()
        second.close()


def pre_nanos_ledger(path: Path) -> None:
    """A ledger as tierline wrote it before m005: costs in micro-dollars."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE _tierline_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    now = datetime.now(timezone.utc).isoformat()
    for step in MIGRATIONS[:4]:
        step(conn)
        conn.execute("INSERT INTO _tierline_migrations VALUES (?, ?)", (step.__name__, now))
    conn.execute(
        "INSERT INTO runs (id, started_at, command, config_origin, inputs, cost_micros, "
        "baseline_micros) VALUES ('old', ?, 'run', 'test', 'a.jsonl', 24, 90)",
        (now,),
    )
    conn.executemany(
        "INSERT INTO calls (run_id, job_id, backend, model, status, cost_micros, baseline_micros, "
        "latency_s, created_at) VALUES ('old', ?, 'b', 'm', 'ok', 12, 45, 0.5, ?)",
        [("j1", now), ("j2", now)],
    )
    conn.close()


def test_micro_dollar_rows_become_nano_dollars(tmp_path: Path) -> None:
    """m005 converts existing costs exactly (x1000) and reports read them in dollars unchanged."""
    from tierline.ledger.reports import Filters, summarize

    path = tmp_path / "old.db"
    pre_nanos_ledger(path)
    with Ledger(path) as ledger:
        calls = ledger.conn.execute("SELECT cost_nanos, baseline_nanos FROM calls").fetchall()
        run = ledger.conn.execute("SELECT cost_nanos, baseline_nanos FROM runs").fetchone()
        [total] = summarize(ledger.conn, [], Filters())
    assert calls == [(12_000, 45_000)] * 2 and run == (24_000, 90_000)
    assert (total.as_dict()["cost_usd"], total.as_dict()["baseline_usd"]) == (0.000024, 0.00009)


def test_merge_reads_an_older_ledger_in_nano_dollars(tmp_path: Path) -> None:
    """`ledger merge` of a source from before m005 (opened read-only, never migrated) keeps
    its costs: micro-dollar columns are read as nano-dollars."""
    from tierline.ledger.merge import merge_ledgers

    old, merged = tmp_path / "old.db", tmp_path / "merged.db"
    pre_nanos_ledger(old)
    report = merge_ledgers([old], merged)
    assert report.runs_added == 1 and report.rows["calls"] == 2
    conn = sqlite3.connect(merged)
    try:
        calls = conn.execute("SELECT cost_nanos, baseline_nanos FROM calls").fetchall()
        run = conn.execute("SELECT cost_nanos, baseline_nanos FROM runs").fetchone()
    finally:
        conn.close()
    assert calls == [(12_000, 45_000)] * 2 and run == (24_000, 90_000)
