"""Ledger migrations on a fresh database and on a v1 (m001-only) one; overlapping writers."""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tierline.jobs import Usage
from tierline.ledger.migrations import MIGRATIONS, migrate
from tierline.ledger.store import CallRecord, Ledger

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
    # m006
    "deduped": "INTEGER",
    "cached": "INTEGER",
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


WRITERS = 4
CALLS_EACH = 300


def write_one_run(path: str, start: Any, writer: int) -> None:
    """One overlapping `tierline run`'s ledger traffic: open (and so create and migrate) the
    ledger the moment every writer is ready, then many short write transactions."""
    start.wait(timeout=60)
    with Ledger(path, flush_every=7) as ledger:
        run_id = ledger.start_run(command=f"w{writer}", config_origin="race", inputs=["-"])
        for i in range(CALLS_EACH):
            usage = Usage(input_tokens=writer + 1, output_tokens=i)
            ledger.record_call(
                run_id,
                CallRecord(f"w{writer}-{i}", 1, "b", "m", "ok", usage, 1, "test", 0.01),
            )
        ledger.finish_run(run_id, jobs=CALLS_EACH, ok=CALLS_EACH, failed=0, status="done")


def test_overlapping_processes_create_and_write_one_ledger(tmp_path: Path) -> None:
    """Four processes open one new ledger at the same moment and interleave their writes: each
    migration is applied once, every process succeeds, and no row is lost or mixed up."""
    path = tmp_path / "shared.db"
    spawn = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited threads
    start = spawn.Barrier(WRITERS)
    procs = [
        spawn.Process(target=write_one_run, args=(str(path), start, w)) for w in range(WRITERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * WRITERS
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _tierline_migrations")]
        assert sorted(names) == sorted(m.__name__ for m in MIGRATIONS)
        runs = conn.execute("SELECT command, jobs, cost_nanos, status FROM runs").fetchall()
        assert sorted(runs) == [(f"w{w}", CALLS_EACH, CALLS_EACH, "done") for w in range(WRITERS)]
        calls = conn.execute(
            "SELECT runs.command, calls.job_id, calls.input_tokens, calls.output_tokens "
            "FROM calls JOIN runs ON runs.id = calls.run_id"
        ).fetchall()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    expected = [(f"w{w}", f"w{w}-{i}", w + 1, i) for w in range(WRITERS) for i in range(CALLS_EACH)]
    assert sorted(calls) == sorted(expected)


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
