"""Ledger fragments of a Ray run: every paid call is on disk before its result leaves an actor.

Beside the ledger `L`, a run keeps:

* `.L.ray-HEX.db`: the driver's fragment, a real tierline ledger holding this run's `runs` row,
  locked (flock) while the driver lives;
* `.L.ray-HEX.actors/`: one ledger per actor incarnation (`PID-HEX.db`), where the actor records
  each call as it completes (group commit within milliseconds, as a local run) and commits
  before it hands any result to Ray. A killed actor leaves its file with every call it paid.

The actor files are the only source of truth for calls (the rows an actor returns with its
results are not written by the driver, so nothing is counted twice). At the end `gather` copies
every actor's calls into the driver's fragment, replacing what an earlier gather copied (so it
can run again after a crash: idempotent), and `ledger merge` (per run, idempotent) takes it
into the ledger. A driver that dies leaves both; the next Ray run on that ledger gathers and
merges them (`merge_orphans`).

The actors must see the driver's filesystem (one machine, or a shared volume mounted at the same
path on every node). An actor that cannot see the run directory refuses to start, before it
sends anything (`open_actor_fragment`): no paid call can go unrecorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ..ledger.merge import merge_ledgers
from ..ledger.migrations import transaction
from ..ledger.store import Ledger

__all__ = ["NOT_SHARED", "DriverFragment", "gather", "merge_orphans", "open_actor_fragment"]

NOT_SHARED = "tierline-not-shared: "  # the refusal's prefix, which the driver turns into exit 2
MARKER = "RUN"  # written by the driver in the run directory: an actor that sees it shares its disk


class DriverFragment:
    """This run's driver fragment and the directory of its actors' fragments."""

    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path.with_name(f".{ledger_path.name}.ray-{uuid.uuid4().hex[:12]}.db")
        self.ledger = Ledger(self.path)
        self._lock = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.actors = actors_dir(self.path)
        self.actors.mkdir()
        (self.actors / MARKER).write_text(f"{socket.gethostname()}\n", encoding="utf-8")

    def gather(self, run_id: str) -> None:
        gather(self.ledger, run_id, self.actors)

    def merge_into(self, ledger_path: Path) -> None:
        self.ledger.close()
        merge_ledgers([self.path], ledger_path)
        _remove(self.path)
        os.close(self._lock)


def actors_dir(fragment: Path) -> Path:
    return fragment.with_suffix(".actors")


def open_actor_fragment(directory: str, run_id: str, actor: str) -> Ledger:
    """The ledger this actor records its calls in; refuses when the run directory is not here."""
    root = Path(directory)
    if not (root / MARKER).is_file():
        raise RuntimeError(
            f"{NOT_SHARED}a Ray actor on host {socket.gethostname()} cannot see the run directory "
            f"{root}: --engine ray records each call on the driver's filesystem, so every node "
            "must mount the ledger's directory at the same path (docs/scale-out.md)"
        )
    ledger = Ledger(root / f"{actor}.db")
    with transaction(ledger.conn):  # the run row the calls refer to; the driver's is the real one
        ledger.conn.execute(
            "INSERT OR IGNORE INTO runs (id, started_at, command, config_origin, inputs) "
            "VALUES (?, ?, 'ray actor', '', '')",
            (run_id, datetime.now(timezone.utc).isoformat()),
        )
    return ledger


def gather(fragment: Ledger, run_id: str, directory: Path) -> int:
    """Copy every actor's calls of `run_id` into `fragment`, in place of any copied before.

    Idempotent: the run's calls in `fragment` are always exactly the union of the actor files,
    so a gather interrupted or repeated (a rerun after the driver died) counts nothing twice."""
    if not directory.is_dir():
        return 0  # a fragment of an older tierline, whose driver recorded the calls itself
    fragment.flush()
    conn = fragment.conn
    columns = [r[1] for r in conn.execute('PRAGMA table_info("calls")') if r[1] != "id"]
    names = ", ".join(f'"{c}"' for c in columns)
    insert = f"INSERT INTO calls ({names}) VALUES ({', '.join('?' * len(columns))})"
    files = sorted(directory.glob("*.db"))
    copied = 0
    with transaction(conn):
        conn.execute("DELETE FROM calls WHERE run_id = ?", (run_id,))
        for path in files:
            src = sqlite3.connect(path)  # read-write: recovers a killed actor's WAL
            try:
                rows = src.execute(
                    f"SELECT {names} FROM calls WHERE run_id = ? ORDER BY id", (run_id,)
                ).fetchall()
            finally:
                src.close()
            conn.executemany(insert, rows)
            copied += len(rows)
    return copied


def _remove(path: Path) -> None:
    shutil.rmtree(actors_dir(path), ignore_errors=True)  # after the merge committed
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def merge_orphans(ledger_path: Path) -> int:
    """Gather and merge the fragments of Ray runs whose driver died (no one holds their lock)."""
    merged = 0
    for path in sorted(ledger_path.parent.glob(f".{ledger_path.name}.ray-*.db")):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live run's
        try:
            with Ledger(path) as fragment:
                for (run_id,) in fragment.conn.execute("SELECT id FROM runs").fetchall():
                    gather(fragment, run_id, actors_dir(path))
            merge_ledgers([path], ledger_path)
            _remove(path)
            merged += 1
        finally:
            os.close(fd)
    return merged
