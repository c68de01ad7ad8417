"""Where provider batches wait: the ledger's record of submissions, batches and their jobs.

    batch_submissions     one per run that sent jobs to provider batches: where its results go
    provider_batches      one per provider batch: backend, provider id, last status seen
    provider_batch_jobs   one per job per batch: custom_id <-> job, state, its result line

A job's state moves  pending -> ok | error | unfinished,  and unfinished -> resubmitted when it
goes into a new batch (a new row). The latest row of a job is the one that counts. `stub` is the
result line written while the job is pending; `result` is its final line once collected.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .migrations import transaction

__all__ = ["BatchRow", "JobRow", "Submission", "SubmissionStore"]

FINAL = ("ok", "error", "unfinished")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True, slots=True)
class Submission:
    run_id: str
    output: str  # absolute path of the results file, or "-" for stdout
    inputs: str  # the run's inputs, one per line
    inputs_key: str | None  # size and mtime of each input; None when one was stdin
    sync_ok: int
    sync_failed: int
    state: str  # "open" while some job is pending, then "done"
    created_at: str


@dataclass(frozen=True, slots=True)
class BatchRow:
    id: int
    run_id: str
    backend: str
    kind: str
    model: str
    batch_id: str | None
    status: str
    requests: int
    bytes: int
    counts: Mapping[str, int]
    error: str | None
    submitted_at: str | None
    ended_at: str | None
    collected_at: str | None


@dataclass(frozen=True, slots=True)
class JobRow:
    batch: int
    seq: int
    custom_id: str
    job_id: str
    state: str
    stub: dict[str, Any]
    result: dict[str, Any] | None
    request: dict[str, Any] | None


_BATCH_COLS = (
    "id, run_id, backend, kind, model, batch_id, status, requests, bytes, counts, error, "
    "submitted_at, ended_at, collected_at"
)
_JOB_COLS = "batch, seq, custom_id, job_id, state, stub, result, request"


def _batch(row: Sequence[Any]) -> BatchRow:
    return BatchRow(
        id=row[0],
        run_id=row[1],
        backend=row[2],
        kind=row[3],
        model=row[4],
        batch_id=row[5],
        status=row[6],
        requests=row[7],
        bytes=row[8],
        counts=json.loads(row[9] or "{}"),
        error=row[10],
        submitted_at=row[11],
        ended_at=row[12],
        collected_at=row[13],
    )


def _job(row: Sequence[Any]) -> JobRow:
    return JobRow(
        batch=row[0],
        seq=row[1],
        custom_id=row[2],
        job_id=row[3],
        state=row[4],
        stub=json.loads(row[5]),
        result=json.loads(row[6]) if row[6] else None,
        request=json.loads(row[7]) if row[7] else None,
    )


class SubmissionStore:
    """SQL for the three tables, on a ledger connection (autocommit; writes in transactions)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # --- submissions ----------------------------------------------------------------------

    def open_submission(
        self, run_id: str, *, output: str, inputs: str, inputs_key: str | None
    ) -> None:
        with transaction(self.conn):
            self.conn.execute(
                """INSERT OR IGNORE INTO batch_submissions
                   (run_id, output, inputs, inputs_key, state, created_at)
                   VALUES (?, ?, ?, ?, 'open', ?)""",
                (run_id, output, inputs, inputs_key, _now()),
            )

    def set_sync_counts(self, run_id: str, *, ok: int, failed: int) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE batch_submissions SET sync_ok = ?, sync_failed = ? WHERE run_id = ?",
                (ok, failed, run_id),
            )

    def set_submission_state(self, run_id: str, state: str) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE batch_submissions SET state = ? WHERE run_id = ?", (state, run_id)
            )

    def submissions(self, *, open_only: bool = True) -> list[Submission]:
        where = "WHERE state = 'open'" if open_only else ""
        rows = self.conn.execute(
            f"""SELECT run_id, output, inputs, inputs_key, sync_ok, sync_failed, state, created_at
                FROM batch_submissions {where} ORDER BY created_at"""
        )
        return [Submission(*row) for row in rows]

    def submission(self, run_id: str) -> Submission | None:
        return next((s for s in self.submissions(open_only=False) if s.run_id == run_id), None)

    # --- batches ----------------------------------------------------------------------------

    def add_batch(
        self,
        run_id: str,
        *,
        backend: str,
        kind: str,
        model: str,
        size: int,
        jobs: Iterable[tuple[int, str, str, str, str]],
    ) -> int:
        """Record a batch about to be submitted with its jobs (seq, custom_id, job_id, stub,
        request); recorded first, so a crash mid-submit leaves a trace rather than an orphan."""
        rows = list(jobs)
        with transaction(self.conn):
            cur = self.conn.execute(
                """INSERT INTO provider_batches (run_id, backend, kind, model, status, requests,
                   bytes, counts) VALUES (?, ?, ?, ?, 'submitting', ?, ?, '{}')""",
                (run_id, backend, kind, model, len(rows), size),
            )
            batch = int(cur.lastrowid or 0)
            self.conn.executemany(
                """INSERT INTO provider_batch_jobs (batch, seq, run_id, custom_id, job_id, state,
                   stub, request) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)""",
                ((batch, seq, run_id, cid, jid, stub, req) for seq, cid, jid, stub, req in rows),
            )
        return batch

    def submitted(self, batch: int, batch_id: str, input_file_id: str | None) -> None:
        with transaction(self.conn):
            self.conn.execute(
                """UPDATE provider_batches SET batch_id = ?, input_file_id = ?, status = 'submitted',
                   submitted_at = ? WHERE id = ?""",
                (batch_id, input_file_id, _now(), batch),
            )

    def seen(self, batch: int, status: str, counts: Mapping[str, int], *, ended: bool) -> None:
        with transaction(self.conn):
            self.conn.execute(
                """UPDATE provider_batches SET status = ?, counts = ?,
                   ended_at = CASE WHEN ? AND ended_at IS NULL THEN ? ELSE ended_at END
                   WHERE id = ?""",
                (status, json.dumps(dict(counts)), ended, _now(), batch),
            )

    def collected(self, batch: int, error: str | None = None) -> None:
        with transaction(self.conn):
            self.conn.execute(
                """UPDATE provider_batches SET collected_at = ?, error = COALESCE(?, error),
                   ended_at = COALESCE(ended_at, ?) WHERE id = ?""",
                (_now(), error, _now(), batch),
            )

    def batches(self, run_id: str | None = None, *, uncollected: bool = False) -> list[BatchRow]:
        clauses, args = [], []
        if run_id is not None:
            clauses.append("run_id = ?")
            args.append(run_id)
        if uncollected:
            clauses.append("collected_at IS NULL")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.conn.execute(
            f"SELECT {_BATCH_COLS} FROM provider_batches {where} ORDER BY id", args
        )
        return [_batch(row) for row in rows]

    # --- jobs -------------------------------------------------------------------------------

    def jobs(self, batch: int) -> Iterator[JobRow]:
        rows = self.conn.execute(
            f"SELECT {_JOB_COLS} FROM provider_batch_jobs WHERE batch = ? ORDER BY seq", (batch,)
        )
        return (_job(row) for row in rows)

    def finish_jobs(self, rows: Iterable[tuple[int, int, str, dict[str, Any]]]) -> None:
        """Set (batch, seq) rows to a final state with their result. An unfinished job keeps its
        request, so it can be resubmitted; the others drop it, to keep the ledger small."""
        with transaction(self.conn):
            self.conn.executemany(
                """UPDATE provider_batch_jobs SET state = ?, result = ?,
                   request = CASE WHEN ? = 'unfinished' THEN request END
                   WHERE batch = ? AND seq = ?""",
                (
                    (state, json.dumps(result), state, batch, seq)
                    for batch, seq, state, result in rows
                ),
            )

    def unfinished(self, run_id: str, backend: str) -> list[JobRow]:
        rows = self.conn.execute(
            f"""SELECT {_JOB_COLS} FROM provider_batch_jobs
                WHERE run_id = ? AND state = 'unfinished'
                  AND batch IN (SELECT id FROM provider_batches WHERE backend = ?)
                ORDER BY batch, seq""",
            (run_id, backend),
        )
        return [_job(row) for row in rows]

    def mark_resubmitted(self, rows: Iterable[tuple[int, int]]) -> None:
        with transaction(self.conn):
            self.conn.executemany(
                """UPDATE provider_batch_jobs SET state = 'resubmitted', request = NULL
                   WHERE batch = ? AND seq = ?""",
                rows,
            )

    def states(self, run_id: str) -> dict[str, int]:
        """How many jobs of the run are in each current state (superseded rows excluded)."""
        rows = self.conn.execute(
            """SELECT state, COUNT(*) FROM provider_batch_jobs
               WHERE run_id = ? AND state != 'resubmitted' GROUP BY state""",
            (run_id,),
        )
        return dict(rows)

    def current(self, run_id: str) -> Iterator[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        """(batch's provider id, stub, final result or None) of every job's current row."""
        rows = self.conn.execute(
            """SELECT COALESCE(b.batch_id, ''), j.stub, j.result FROM provider_batch_jobs j
               JOIN provider_batches b ON b.id = j.batch
               WHERE j.run_id = ? AND j.state != 'resubmitted'""",
            (run_id,),
        )
        return (
            (batch_id, json.loads(stub), json.loads(result) if result else None)
            for batch_id, stub, result in rows
        )
