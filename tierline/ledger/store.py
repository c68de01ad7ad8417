"""The ledger: a SQLite file with a row per run and a row per dispatched call.

WAL mode and a busy timeout make it safe for overlapping cron runs and parallel shells. Money is
stored as integer micro-dollars; a NULL cost means "price unknown", never "free".
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from ..config import data_dir
from ..jobs import Usage
from .migrations import migrate

__all__ = ["CallRecord", "Ledger", "default_ledger_path", "to_micros"]

BUSY_TIMEOUT_MS = 30_000  # overlapping runs wait for each other's short write transactions


def default_ledger_path() -> Path:
    return data_dir() / "ledger.db"


def to_micros(usd: float | None) -> int | None:
    return None if usd is None else round(usd * 1_000_000)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One dispatched call, successful or not (failed calls can cost money too)."""

    job_id: str | None
    tier: int | None
    backend: str
    model: str
    status: str
    usage: Usage
    cost_usd: float | None
    price_source: str | None
    latency_s: float
    attempt: int = 1
    error: str | None = None


class Ledger:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; WAL-safe
        self.conn.execute("PRAGMA foreign_keys = ON")
        migrate(self.conn)

    def start_run(self, *, command: str, config_origin: str, inputs: list[str]) -> str:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        with self.conn:
            self.conn.execute(
                "INSERT INTO runs (id, started_at, command, config_origin, inputs) VALUES (?, ?, ?, ?, ?)",
                (run_id, _now(), command, config_origin, "\n".join(inputs)),
            )
        return run_id

    def record_call(self, run_id: str, call: CallRecord) -> None:
        u = call.usage
        with self.conn:
            self.conn.execute(
                """INSERT INTO calls (run_id, job_id, tier, backend, model, status, input_tokens,
                   output_tokens, cached_tokens, reasoning_tokens, cost_micros, price_source,
                   latency_s, attempt, error, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    run_id,
                    call.job_id,
                    call.tier,
                    call.backend,
                    call.model,
                    call.status,
                    u.input_tokens,
                    u.output_tokens,
                    u.cached_tokens,
                    u.reasoning_tokens,
                    to_micros(call.cost_usd),
                    call.price_source,
                    call.latency_s,
                    call.attempt,
                    call.error,
                    _now(),
                ),
            )

    def finish_run(self, run_id: str, *, jobs: int, ok: int, failed: int, status: str) -> None:
        with self.conn:
            self.conn.execute(
                """UPDATE runs SET finished_at = ?, jobs = ?, ok = ?, failed = ?, status = ?,
                   cost_micros = (SELECT COALESCE(SUM(cost_micros), 0) FROM calls WHERE run_id = ?)
                   WHERE id = ?""",
                (_now(), jobs, ok, failed, status, run_id, run_id),
            )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
