"""The ledger: a SQLite file with a row per run and a row per dispatched call.

WAL mode and a busy timeout make it safe for overlapping cron runs and parallel shells: readers
never block, and writers hold the lock only for short transactions.

Write-ahead: a call is in the ledger before its job's result is written. Inside a run (an event
loop), `record_call` buffers the row and schedules a group commit `GROUP_COMMIT_S` later, and
the scheduler awaits `durable()` before it hands the result to the output; calls that finish
together share one commit, so a busy run does not pay a commit per call. A `kill -9` therefore
loses only rows of jobs whose result was not written yet (in flight), and those rows are
committed within `GROUP_COMMIT_S` even when nothing else happens. Outside an event loop rows
are written every `FLUSH_EVERY` calls or `FLUSH_INTERVAL_S` seconds and at `flush()`/`close()`.

Money is stored as integer nano-dollars (`cost_nanos`; migration m005); a NULL cost means
"price unknown", never "free".
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType

from ..config import Config, data_dir
from ..jobs import Usage
from .batches import SubmissionStore
from .migrations import migrate, transaction

__all__ = ["CallRecord", "Ledger", "RunRow", "ledger_path_for"]

BUSY_TIMEOUT_MS = 30_000  # overlapping runs wait for each other's short write transactions
FLUSH_EVERY = 256  # calls per write transaction
FLUSH_INTERVAL_S = 1.0  # ... or at least this often, so `tierline ledger` sees a live run
# In a run: how long a recorded call waits for others to share its commit; results wait this
# long at most before they are written. benchmarks/bench_ledger.py: a commit per call costs
# ~10x a row in a batch, and with 64 jobs in flight this shares each commit among ~60 calls.
GROUP_COMMIT_S = 0.002


def ledger_path_for(explicit: str | None, config: Config) -> Path:
    """The one rule for where the ledger is: --ledger, else the config's [ledger] path, else
    ledger.db in the user data dir ($TIERLINE_HOME)."""
    return Path(explicit or config.ledger.path or data_dir() / "ledger.db")


def _tierline_version() -> str | None:
    try:
        return version("tierline")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return None


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
    cost_nanos: int | None  # None: the price is unknown
    price_source: str | None
    latency_s: float
    attempt: int = 1  # attempts made on this backend (retries included)
    error: str | None = None
    endpoint: str | None = None
    price_version: str | None = None
    batch: bool = False
    baseline_nanos: int | None = None
    busy_s: float | None = None
    hop: int = 1
    check_failed: str | None = None  # the answer check this call's answer failed (escalation)


@dataclass(frozen=True, slots=True)
class RunRow:
    """What a later process needs to know of an earlier run (batch collection)."""

    id: str
    config_origin: str  # the config file the run used, or "embedded default"
    jobs: int


_INSERT = """INSERT INTO calls (run_id, job_id, tier, backend, model, status, input_tokens,
    output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost_nanos,
    price_source, price_version, batch, baseline_nanos, busy_s, endpoint, latency_s, attempt,
    hop, error, check_failed, created_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""


def _row(run_id: str, c: CallRecord, created_at: str) -> tuple[object, ...]:
    u = c.usage
    return (
        run_id,
        c.job_id,
        c.tier,
        c.backend,
        c.model,
        c.status,
        u.input_tokens,
        u.output_tokens,
        u.cached_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
        c.cost_nanos,
        c.price_source,
        c.price_version,
        int(c.batch),
        c.baseline_nanos,
        c.busy_s,
        c.endpoint,
        c.latency_s,
        c.attempt,
        c.hop,
        c.error,
        c.check_failed,
        created_at,
    )


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL mode. SQLite answers "database is locked" at once, without waiting out the
    busy timeout, when another process is creating the same new ledger at that moment
    (tests/ledger/test_migrations.py races four): so wait here, up to the same timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Ledger:
    def __init__(self, path: Path | str, *, flush_every: int = FLUSH_EVERY) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enable_wal(self.conn)
        self.conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; WAL-safe
        self.conn.execute("PRAGMA foreign_keys = ON")
        migrate(self.conn)
        self.flush_every = flush_every
        self._buffer: list[tuple[object, ...]] = []
        self._flushed_at = time.monotonic()
        self._commit: asyncio.Task[None] | None = None  # the scheduled group commit

    @cached_property
    def batches(self) -> SubmissionStore:
        """The provider-batch tables (submissions, batches, their jobs) of this ledger."""
        return SubmissionStore(self.conn)

    def run(self, run_id: str) -> RunRow | None:
        row = self.conn.execute(
            "SELECT id, config_origin, jobs FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        return None if row is None else RunRow(str(row[0]), str(row[1]), int(row[2]))

    def start_run(
        self,
        *,
        command: str,
        config_origin: str,
        inputs: list[str],
        baseline_model: str | None = None,
        max_cost_micros: int | None = None,
        price_version: str | None = None,
    ) -> str:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        with transaction(self.conn):
            self.conn.execute(
                """INSERT INTO runs (id, started_at, command, config_origin, inputs,
                   baseline_model, max_cost_micros, price_version, tierline_version)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    run_id,
                    _now(),
                    command,
                    config_origin,
                    "\n".join(inputs),
                    baseline_model,
                    max_cost_micros,
                    price_version,
                    _tierline_version(),
                ),
            )
        return run_id

    def record_call(self, run_id: str, call: CallRecord) -> None:
        """Buffer one call; in an event loop it is committed within GROUP_COMMIT_S."""
        self._buffer.append(_row(run_id, call, _now()))
        if len(self._buffer) >= self.flush_every:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no run loop (provider batch collection, library use)
            if time.monotonic() - self._flushed_at >= FLUSH_INTERVAL_S:
                self.flush()
            return
        if self._commit is None:
            # A timer, not the next call: a row must not wait for traffic to be written.
            self._commit = loop.create_task(self._group_commit())

    async def _group_commit(self) -> None:
        try:
            await asyncio.sleep(GROUP_COMMIT_S)
        finally:
            self._commit = None
        self.flush()

    async def durable(self) -> None:
        """Return once every call recorded so far is committed (write-ahead of the result)."""
        while self._buffer:
            commit = self._commit
            if commit is None:
                self.flush()
                return
            await asyncio.shield(commit)

    def flush(self) -> None:
        """Write the buffered calls in one short transaction."""
        self._flushed_at = time.monotonic()
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        try:
            with transaction(self.conn):
                self.conn.executemany(_INSERT, rows)
        except BaseException:
            self._buffer[:0] = rows  # not written: keep them for the next flush or close()
            raise

    def sync(self) -> None:
        """Commit the buffered calls and fsync the WAL: durable across a power cut too.

        Called before the results file is fsynced, so a synced result never has calls that
        a power cut could take back (synchronous=NORMAL syncs the WAL only at checkpoints)."""
        self.flush()
        wal = f"{self.path}-wal"
        if str(self.path) == ":memory:" or not os.path.exists(wal):
            return
        fd = os.open(wal, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def finish_run(
        self,
        run_id: str,
        *,
        jobs: int,
        ok: int,
        failed: int,
        status: str,
        skipped_budget: int = 0,
        deduped: int = 0,
        cached: int = 0,
    ) -> None:
        self.flush()
        with transaction(self.conn):
            self.conn.execute(
                """UPDATE runs SET finished_at = ?, jobs = ?, ok = ?, failed = ?, status = ?,
                   skipped_budget = ?, deduped = ?, cached = ?,
                   cost_nanos = (SELECT COALESCE(SUM(cost_nanos), 0) FROM calls WHERE run_id = ?),
                   baseline_nanos = (SELECT COALESCE(SUM(baseline_nanos), 0) FROM calls
                                     WHERE run_id = ? AND cost_nanos IS NOT NULL),
                   unpriced_calls = (SELECT COUNT(*) FROM calls
                                     WHERE run_id = ? AND cost_nanos IS NULL)
                   WHERE id = ?""",
                (
                    _now(),
                    jobs,
                    ok,
                    failed,
                    status,
                    skipped_budget,
                    deduped,
                    cached,
                    run_id,
                    run_id,
                    run_id,
                    run_id,
                ),
            )

    def close(self) -> None:
        try:
            self.flush()
        finally:
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
