"""Ledger fragments of a Ray run: every paid call is on disk before its result leaves an actor.

Beside the ledger `L`, a run keeps:

* `.L.ray-HEX.db`: the driver's fragment, a real tierline ledger holding this run's `runs` row,
  locked (flock) while the driver lives;
* `.L.ray-HEX.actors/`: one ledger per actor incarnation (`PID-HEX.db`), where the actor records
  each call as it completes (group commit within milliseconds, as a local run) and commits
  before it hands any result to Ray. A killed actor leaves its file with every call it paid.
  Each file also keeps the result line of every job the actor answered, by resume key
  (`ray_results`), committed with (never before) that job's calls: a job answered once is
  never paid again in this run or its rerun, wherever its result was lost on the way (a
  killed actor's unsent chunk, a block Ray retried, a stopped or dead driver). A retried
  block reuses them (`StoredResults`), and so does the driver (`stored_results`).

The actor files are the only source of truth for calls (the rows an actor returns with its
results are not written by the driver, so nothing is counted twice). At the end `gather` copies
every actor's calls into the driver's fragment, replacing what an earlier gather copied (so it
can run again after a crash: idempotent), and `ledger merge` (per run, idempotent) takes it
into the ledger. A driver that dies leaves both; the next Ray run on that ledger gathers and
merges them (`merge_orphans`).

The actors must see the driver's filesystem (one machine, or a shared volume mounted at the same
path on every node). An actor that cannot see the run directory refuses to start, before it
sends anything (`open_actor_fragment`): no paid call can go unrecorded.

**A dead driver's actors** can outlive it (Ray kills them only once it learns of the death:
at once when the driver's own raylet sees it go, later when the driver's own local cluster
goes down with it, later still when the driver's machine is lost). A rerun that read their
stored answers while they still paid would send the same jobs again. Three flocks (the kernel
drops each when its process dies, however it dies) prevent it:

* the driver holds an exclusive lock on its fragment (taken by the one run that adopts it as
  an orphan) and another on the run directory's marker `RUN`, which only it takes: an actor
  tells that its driver is gone when a non-blocking shared lock on `RUN` succeeds (released
  at once). Not the fragment's lock: an adopting rerun takes that one, so an actor that looked
  late would think its driver alive, and an actor's probe would make a rerun's own
  non-blocking attempt fail, taking a dead run for a live one;
* each actor holds an exclusive lock on `PID-HEX.lock`, made locked before it is named (no
  moment where it exists unlocked), for as long as it may pay: it probes `RUN` before each
  call (one syscall) and on a 0.1 s timer, and once its driver is gone it starts no call,
  gives those in flight the run's grace period, commits what it paid and answered, and lets
  the lock go (`DriverWatch`, worker.py);
* a run that adopts a dead driver's fragment (`Orphans`) first waits for every actor lock of
  that directory to be free, bounded by its grace period plus `ACTOR_STOP_MARGIN_S`, then
  reads the stored answers: whatever the old actors paid meanwhile is reused, not paid again.
  A wait that times out refuses the run (`LockedError`, exit 5, the code of "another run
  holds the lock": retry later) before anything is sent.

An actor that starts after its driver died sees `RUN` free before its first call and sends
nothing, so a lock made after the rerun looked is harmless. On a shared volume the locks must
be coherent across machines: Linux's NFS client turns flock into NFS byte-range locks (NFSv4:
a dead machine's locks go when its lease expires, about 90 s, which the rerun's bounded wait
then reports as exit 5); a filesystem whose flock is node-local would let a rerun on another
machine see an actor's file as free, so there the rule is to rerun on the driver's machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from ..errors import LockedError
from ..interrupts import DEFAULT_GRACE_S
from ..ledger.merge import merge_ledgers
from ..ledger.migrations import transaction
from ..ledger.store import _INSERT, Ledger

__all__ = [
    "ACTOR_STOP_MARGIN_S",
    "NOT_SHARED",
    "ActorFragment",
    "DriverFragment",
    "DriverWatch",
    "Orphans",
    "StoredResults",
    "gather",
    "mark_shared",
    "merge_orphans",
    "merge_run_dir",
    "open_actor_fragment",
    "stored_results",
]

NOT_SHARED = "tierline-not-shared: "  # the refusal's prefix, which the driver turns into exit 2
MARKER = "RUN"  # written by the driver in the run directory: an actor that sees it shares its disk
RESULTS_TABLE = """CREATE TABLE IF NOT EXISTS ray_results (
    key TEXT PRIMARY KEY, run_id TEXT NOT NULL, result TEXT NOT NULL)"""
_SAVE = "INSERT OR REPLACE INTO ray_results (key, run_id, result) VALUES (?, ?, ?)"
LOOKUP_CHUNK = 500  # keys per query (SQLite's bound-parameter limit is 32,766)
# how much longer than its grace period a rerun waits for a dead run's actors to stop: the
# actors' 0.1 s probe, their last commit, an event loop busy with a block's conversion
ACTOR_STOP_MARGIN_S = 10.0
LOCK_POLL_S = 0.05  # how often a rerun looks at a dead run's actor locks


class ActorFragment(Ledger):
    """An actor's ledger file: its calls, and the result line of each job it answered.

    A result rides in the same group commit as the calls recorded before it (its job's
    included), so a stored result's calls are always in the file: reusing it never hides a
    paid call. One transaction per group commit, as for calls alone: no extra commit per job."""

    def __init__(self, path: Path | str, lock: int | None = None) -> None:
        super().__init__(path)
        self.conn.execute(RESULTS_TABLE)
        self._results: list[tuple[str, str, str]] = []
        self._lock = lock  # the flock that says "this actor may still pay" (module docstring)

    def release(self) -> None:
        """Let go of the actor's lock: it will pay nothing more, and all it paid is committed."""
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release()

    def record_result(self, run_id: str, key: str, line: str) -> None:
        """Keep `line` (a result record, JSON) as the answer of `key`; committed within
        milliseconds, as a call is."""
        self._results.append((key, run_id, line))
        if self._commit is None:
            self._commit = asyncio.get_running_loop().create_task(self._group_commit())

    def flush(self) -> None:
        if not self._results:
            super().flush()
            return
        self._flushed_at = time.monotonic()
        rows, self._buffer = self._buffer, []
        results, self._results = self._results, []
        try:
            with transaction(self.conn):
                self.conn.executemany(_INSERT, rows)
                self.conn.executemany(_SAVE, results)
        except BaseException:
            self._buffer[:0] = rows  # not written: kept for the next flush or close()
            self._results[:0] = results
            raise

    async def durable(self) -> None:
        await super().durable()
        if self._results:  # results recorded after the last call: no commit was waiting
            self.flush()


class DriverFragment:
    """This run's driver fragment and the directory of its actors' fragments."""

    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path.with_name(f".{ledger_path.name}.ray-{uuid.uuid4().hex[:12]}.db")
        self.ledger = Ledger(self.path)
        self._lock = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.actors = actors_dir(self.path)
        self.actors.mkdir()
        mark_shared(self.actors)
        # only the driver locks its marker: while it is held the driver lives (DriverWatch)
        self._alive = os.open(self.actors / MARKER, os.O_RDONLY)
        fcntl.flock(self._alive, fcntl.LOCK_EX)

    def gather(self, run_id: str) -> None:
        gather(self.ledger, run_id, self.actors)

    def merge_into(self, ledger_path: Path) -> None:
        self.ledger.close()
        merge_ledgers([self.path], ledger_path)
        _remove(self.path)
        os.close(self._alive)
        os.close(self._lock)


def mark_shared(directory: Path) -> Path:
    """Make `directory` a run directory of actor files (created if missing), marked so that an
    actor on a node that cannot see it refuses before sending; its absolute path (actors run
    elsewhere)."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text(f"{socket.gethostname()}\n", encoding="utf-8")
    return directory


def actors_dir(fragment: Path) -> Path:
    return fragment.with_suffix(".actors")


def open_actor_fragment(directory: str, run_id: str, actor: str) -> ActorFragment:
    """The ledger this actor records its calls in; refuses when the run directory is not here."""
    root = Path(directory)
    if not (root / MARKER).is_file():
        raise RuntimeError(
            f"{NOT_SHARED}a Ray actor on host {socket.gethostname()} cannot see the run directory "
            f"{root}: --engine ray records each call on the driver's filesystem, so every node "
            "must mount the ledger's directory at the same path (docs/scale-out.md)"
        )
    # locked before the first call, for as long as this actor may pay (module docstring)
    ledger = ActorFragment(root / f"{actor}.db", _new_locked(root / f"{actor}.lock"))
    with transaction(ledger.conn):  # the run row the calls refer to; the driver's is the real one
        ledger.conn.execute(
            "INSERT OR IGNORE INTO runs (id, started_at, command, config_origin, inputs) "
            "VALUES (?, ?, 'ray actor', '', '')",
            (run_id, datetime.now(timezone.utc).isoformat()),
        )
    return ledger


def _new_locked(path: Path) -> int:
    """A new file at `path`, exclusively flocked from before it appears there (made under
    another name, locked, then renamed: a rerun never sees it unlocked while its actor lives).
    The descriptor holds the lock."""
    draft = path.with_name(f"{path.name}.new")
    fd = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(draft, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


class DriverWatch:
    """An actor's view of its driver's life: the driver holds an exclusive lock on the run
    directory's marker while it lives, and nothing else ever locks it for long (module
    docstring). Once gone, gone for good."""

    def __init__(self, directory: Path) -> None:
        self._fd: int | None = os.open(directory / MARKER, os.O_RDONLY)
        self.gone = False

    def check(self) -> bool:
        """True once the driver is gone (a non-blocking shared lock on the marker succeeds)."""
        if self._fd is None:
            return self.gone
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.close(self._fd)  # closing drops the probe's lock too
        self._fd = None
        self.gone = True
        return True


def live_actors(directory: Path) -> list[Path]:
    """The actor locks of `directory` still held: actors that may still pay."""
    held = []
    for path in sorted(directory.glob("*.lock")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(path)
        finally:
            os.close(fd)
    return held


def wait_for_actors(
    directory: Path, wait_s: float, notify: Callable[[str], None] | None = None
) -> None:
    """Return once no actor of `directory` may still pay; LockedError after `wait_s`.
    `notify` gets one line, only if there is something to wait for."""
    deadline = time.monotonic() + wait_s
    told = False
    while live := live_actors(directory):
        if not told and notify is not None:
            notify(f"waiting for {len(live)} actor(s) of a dead run to stop")
            told = True
        if time.monotonic() >= deadline:
            raise LockedError(
                f"{len(live)} Ray actor(s) of a dead run ({directory}) still hold their locks "
                f"after {wait_s:.0f} s: this run would pay again for what they answer. Run "
                "again once they stop (Ray stops them when it notices their driver died; "
                "`ray list actors` shows them)"
            )
        time.sleep(LOCK_POLL_S)


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


def merge_run_dir(directory: Path, ledger_path: Path, run_id: str) -> int:
    """Every call the actors of `directory` recorded for `run_id` into the ledger at
    `ledger_path`, as one run (`tierline.ray.dispatch` with `run_dir`): gathered into a
    fragment beside the ledger, then merged; the number of calls. Merging the same run again
    adds nothing (`ledger merge` is idempotent per run)."""
    if not (directory / MARKER).is_file():
        raise FileNotFoundError(f"{directory}: not a run directory of tierline's Ray actors")
    # not named like a driver's fragment (`.ray-*.db`): a Ray run starting on the same ledger
    # would take this unlocked file for a dead driver's and merge it half built, and then this
    # merge would add nothing (merging is idempotent per run)
    path = ledger_path.with_name(f".{ledger_path.name}.record-{uuid.uuid4().hex[:12]}.db")
    try:
        with Ledger(path) as fragment:
            with transaction(fragment.conn):
                fragment.conn.execute(
                    "INSERT INTO runs (id, started_at, command, config_origin, inputs) "
                    "VALUES (?, ?, 'tierline.ray.dispatch', '', ?)",
                    (run_id, datetime.now(timezone.utc).isoformat(), str(directory)),
                )
            copied = gather(fragment, run_id, directory)
        merge_ledgers([path], ledger_path)
    finally:
        _remove(path)
    return copied


def _remove(path: Path) -> None:
    shutil.rmtree(actors_dir(path), ignore_errors=True)  # after the merge committed
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


class Orphans:
    """The fragments of Ray runs whose driver died (no one holds their lock), found when a run
    starts: once their actors have stopped (`wait_for_actors`, at most `wait_s`), merged into
    the ledger, their stored answers reused by this run (jobs the dead run paid for but never
    wrote are not sent again), and removed at this run's end, after a second gather. Locked
    meanwhile, so a concurrent Ray run on the ledger leaves them alone; if this run dies too,
    the next one finds them again (merging is idempotent)."""

    def __init__(
        self,
        ledger_path: Path,
        wait_s: float = DEFAULT_GRACE_S + ACTOR_STOP_MARGIN_S,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.ledger_path = ledger_path
        self.held: list[tuple[Path, int]] = []
        try:
            for path in sorted(ledger_path.parent.glob(f".{ledger_path.name}.ray-*.db")):
                fd = os.open(path, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # a live run's
                self.held.append((path, fd))
                wait_for_actors(actors_dir(path), wait_s, notify)
                _merge(path, ledger_path)
        except BaseException:
            for _, fd in self.held:  # left for a later run: nothing of them was removed
                os.close(fd)
            raise

    @property
    def directories(self) -> list[Path]:
        return [actors_dir(path) for path, _ in self.held]

    def close(self) -> None:
        held, self.held = self.held, []
        for path, fd in held:
            try:
                _merge(path, self.ledger_path)
                _remove(path)
            finally:
                os.close(fd)


def _merge(path: Path, ledger_path: Path) -> None:
    with Ledger(path) as fragment:
        for (run_id,) in fragment.conn.execute("SELECT id FROM runs").fetchall():
            gather(fragment, run_id, actors_dir(path))
    merge_ledgers([path], ledger_path)


def merge_orphans(ledger_path: Path) -> int:
    """Gather, merge and remove the fragments of Ray runs whose driver died."""
    orphans = Orphans(ledger_path)
    count = len(orphans.held)
    orphans.close()
    return count


class StoredResults:
    """The answers stored in the actor files of run directories, looked up by resume key.

    Read while their actors write (WAL readers do not block the writer); a file's answers are
    committed with their calls, so what is found here was paid and is recorded."""

    def __init__(self, directories: Iterable[Path]) -> None:
        self.directories = list(directories)
        self._conns: dict[Path, sqlite3.Connection] = {}

    def find(self, keys: list[str]) -> dict[str, str]:
        """The stored result line of each of `keys` that has one."""
        found: dict[str, str] = {}
        if not keys:
            return found
        for path in (p for d in self.directories for p in sorted(d.glob("*.db"))):
            conn = self._conns.get(path)
            if conn is None:
                conn = self._conns[path] = sqlite3.connect(path, timeout=30)
            for start in range(0, len(keys), LOOKUP_CHUNK):
                chunk = keys[start : start + LOOKUP_CHUNK]
                marks = ", ".join("?" * len(chunk))
                query = f"SELECT key, result FROM ray_results WHERE key IN ({marks})"
                try:
                    found.update(conn.execute(query, chunk).fetchall())
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc):
                        raise
                    break  # an actor file being created: nothing stored in it yet
        return found

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


def stored_results(directories: Iterable[Path], keys: list[str]) -> Iterator[tuple[str, str]]:
    """(key, result line) for each of `keys` answered in one of `directories` (the driver)."""
    stored = StoredResults(directories)
    try:
        yield from stored.find(keys).items()
    finally:
        stored.close()
