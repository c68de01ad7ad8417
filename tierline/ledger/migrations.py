"""Named, ordered ledger migrations, each applied once in its own transaction.

Add a migration by appending a function `mNNN_description(conn)`; never edit one that shipped.
Applied names are recorded in `_tierline_migrations`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone

__all__ = ["MIGRATIONS", "migrate"]

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


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet applied; return the names applied now."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _tierline_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM _tierline_migrations")}
    applied = []
    for step in MIGRATIONS:
        if step.__name__ in done:
            continue
        with conn:  # one transaction per migration: all of it or none of it
            step(conn)
            conn.execute(
                "INSERT INTO _tierline_migrations (name, applied_at) VALUES (?, ?)",
                (step.__name__, datetime.now(timezone.utc).isoformat()),
            )
        applied.append(step.__name__)
    return applied
