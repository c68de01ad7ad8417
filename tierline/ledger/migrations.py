"""Named, ordered ledger migrations, each applied once in its own transaction.

Add a migration by appending a function `mNNN_description(conn)`; never edit one that shipped.
Applied names are recorded in `_tierline_migrations`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

__all__ = ["MIGRATIONS", "migrate", "transaction"]

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []
migration = MIGRATIONS.append


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            command TEXT NOT NULL,
            config_origin TEXT NOT NULL,
            inputs TEXT NOT NULL,
            jobs INTEGER NOT NULL DEFAULT 0,
            ok INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            cost_micros INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'running'
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE calls (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(id),
            job_id TEXT,
            tier INTEGER,
            backend TEXT NOT NULL,
            model TEXT NOT NULL,
            status TEXT NOT NULL,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            reasoning_tokens INTEGER NOT NULL DEFAULT 0,
            cost_micros INTEGER,
            price_source TEXT,
            latency_s REAL NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 1,
            error TEXT,
            created_at TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX calls_run ON calls(run_id)")


@migration
def m002_costs(conn: sqlite3.Connection) -> None:
    """Price provenance, cache writes, batch, baseline (savings) and busy time; run totals."""
    for column in (
        "endpoint TEXT",  # the URL (or "in-process") that served the call
        "cache_write_tokens INTEGER NOT NULL DEFAULT 0",
        "price_version TEXT",  # e.g. "genai-prices 0.2.3", or the config file for overrides
        "batch INTEGER NOT NULL DEFAULT 0",  # 1: billed at the provider's batch discount
        "baseline_micros INTEGER",  # the same usage on the baseline model
        "busy_s REAL",  # share of the backend's busy time (gpu_hour_usd pricing)
        "hop INTEGER NOT NULL DEFAULT 1",  # position in the tier's route (1 = first backend)
    ):
        conn.execute(f"ALTER TABLE calls ADD COLUMN {column}")
    for column in (
        "baseline_model TEXT",
        "baseline_micros INTEGER NOT NULL DEFAULT 0",
        "unpriced_calls INTEGER NOT NULL DEFAULT 0",  # calls with an unknown price (NULL cost)
        "skipped_budget INTEGER NOT NULL DEFAULT 0",
        "max_cost_micros INTEGER",  # the run's --max-cost, if any
        "price_version TEXT",
        "tierline_version TEXT",
    ):
        conn.execute(f"ALTER TABLE runs ADD COLUMN {column}")
    conn.execute("CREATE INDEX calls_created ON calls(created_at)")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken up front so overlapping processes queue on busy_timeout.

    The connection is in autocommit mode (isolation_level=None), where `with conn:` would not
    open a transaction at all.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet applied; return the names applied now."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _tierline_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    applied = []
    for step in MIGRATIONS:
        # Checked inside the transaction: two processes opening a new ledger at once must not
        # both apply the same migration.
        with transaction(conn):
            done = conn.execute(
                "SELECT 1 FROM _tierline_migrations WHERE name = ?", (step.__name__,)
            ).fetchone()
            if done:
                continue
            step(conn)
            conn.execute(
                "INSERT INTO _tierline_migrations (name, applied_at) VALUES (?, ?)",
                (step.__name__, datetime.now(timezone.utc).isoformat()),
            )
        applied.append(step.__name__)
    return applied


# Appended last on purpose: other migrations may be added above; this one only needs m001.
@migration
def m003_provider_batches(conn: sqlite3.Connection) -> None:
    """Provider batches (OpenAI Batch, Anthropic Message Batches) and the jobs waiting in them;
    tierline/ledger/batches.py reads and writes them."""
    conn.execute(
        """
        CREATE TABLE batch_submissions (
            run_id TEXT PRIMARY KEY REFERENCES runs(id),
            output TEXT NOT NULL,
            inputs TEXT NOT NULL,
            inputs_key TEXT,
            sync_ok INTEGER NOT NULL DEFAULT 0,
            sync_failed INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            created_at TEXT NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE provider_batches (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(id),
            backend TEXT NOT NULL,
            kind TEXT NOT NULL,
            model TEXT NOT NULL,
            batch_id TEXT,
            input_file_id TEXT,
            status TEXT NOT NULL,
            requests INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            counts TEXT NOT NULL,
            error TEXT,
            submitted_at TEXT,
            ended_at TEXT,
            collected_at TEXT
        )
        """
    )
    conn.execute("CREATE INDEX provider_batches_run ON provider_batches(run_id)")
    conn.execute(
        """
        CREATE TABLE provider_batch_jobs (
            batch INTEGER NOT NULL REFERENCES provider_batches(id),
            seq INTEGER NOT NULL,
            run_id TEXT NOT NULL,
            custom_id TEXT NOT NULL,
            job_id TEXT NOT NULL,
            state TEXT NOT NULL,
            stub TEXT NOT NULL,
            result TEXT,
            request TEXT,
            PRIMARY KEY (batch, seq)
        )
        """
    )
    conn.execute("CREATE INDEX provider_batch_jobs_run ON provider_batch_jobs(run_id, state)")


@migration
def m004_answer_checks(conn: sqlite3.Connection) -> None:
    """The answer check a call failed (escalation, dispatch/checks.py), and the tier whose route
    it ran on is already `tier`: together they give escalation rates per tier and backend."""
    conn.execute("ALTER TABLE calls ADD COLUMN check_failed TEXT")


# (table, new column) -> (the column it replaces, factor): ledger merge reads older sources
# through this, so a ledger written before m005 merges with its costs.
NANOS_FROM_MICROS: dict[tuple[str, str], tuple[str, int]] = {
    ("calls", "cost_nanos"): ("cost_micros", 1000),
    ("calls", "baseline_nanos"): ("baseline_micros", 1000),
    ("runs", "cost_nanos"): ("cost_micros", 1000),
    ("runs", "baseline_nanos"): ("baseline_micros", 1000),
}


@migration
def m005_nano_dollars(conn: sqlite3.Connection) -> None:
    """Costs in integer nano-dollars instead of micro-dollars: a cheap call costs a fraction of
    a micro-dollar's worth of rounding (11.925 µ$ for a small gpt-4o-mini call), and rounding
    each same-sized call the same way biased sums over millions of them. Existing rows are
    converted exactly (x1000); their sub-micro-dollar part was already lost."""
    for (table, new), (old, factor) in NANOS_FROM_MICROS.items():
        conn.execute(f'ALTER TABLE "{table}" RENAME COLUMN "{old}" TO "{new}"')
        conn.execute(f'UPDATE "{table}" SET "{new}" = "{new}" * {factor}')


@migration
def m006_reused_answers(conn: sqlite3.Connection) -> None:
    """Jobs of a run answered without a call: copies of an identical job's answer (dedup) and
    answer-cache hits (dispatch/answers.py). They cost nothing and have no calls rows."""
    conn.execute("ALTER TABLE runs ADD COLUMN deduped INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE runs ADD COLUMN cached INTEGER NOT NULL DEFAULT 0")
