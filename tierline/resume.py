"""Crash-safe, resumable output: the resume key, the results journal and the run lock.

A run writing to ``-o PATH`` keeps its results in ``PATH.partial``, one JSON line per job, each
carrying its resume ``key``. Rerunning the same command after a crash, ``kill -9``, Ctrl-C or a
power cut reads that file back, keeps every complete result and skips those jobs; only what was
in flight is dispatched again. When the run ends the file is fsynced and renamed to ``PATH``, so
a Makefile never sees a half-written file as complete. docs/reliability.md has the whole story.

The resume key is a hash of the job's content (its parsed JSON and id, never its line number)
and of the route fingerprint: the parts of the config that decide what answer a job gets
(backends, routes, tiering, defaults), minus operational knobs such as concurrency, rate
limits, timeouts, URLs and prices, which a user may well change before resuming.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO

import orjson

from .config import Config, data_dir
from .errors import LockedError, UsageError
from .jobs import InvalidLine, Job, Result

__all__ = [
    "DONE_STATUSES",
    "FSYNC_EVERY",
    "FSYNC_INTERVAL_S",
    "Journal",
    "RunLock",
    "answer_key",
    "job_key",
    "route_fingerprint",
]

# fsync the partial file after this many results or this many seconds, whichever comes first,
# and always at the end. benchmarks/bench_fsync.py: an fsync per result costs 15-20x the
# whole write path (1.4-2.2 ms each on this ext4 disk); this policy is within noise of none.
FSYNC_EVERY = 256
FSYNC_INTERVAL_S = 1.0

# Results that count as done on resume. `pending` is a provider batch already paid for;
# a budget-skipped or cancelled job cost nothing, so it is tried again.
DONE_STATUSES = frozenset({"ok", "error", "invalid", "pending"})
# Results that --retry-failed keeps: `pending` is in a provider batch that is already paid for
# (`tierline batch collect` fills it in); sending it again would pay twice.
RETRY_KEEPS = frozenset({"ok", "pending"})

# Backend settings that change how a job is sent, not what answer it gets: changing them
# between a crash and the resume keeps the work done.
OPERATIONAL = frozenset(
    {
        "max_concurrency",
        "rpm",
        "tpm",
        "timeout_s",
        "max_attempts",
        "base_url",
        "base_urls",
        "api_key_env",
        "organization",
        "n_threads",
        "workers",
        "parallel",
        "max_restarts",
        "n_gpu_layers",
        "price",
        "gpu_hour_usd",
        "circuit_failures",
        "circuit_reset_s",
        "http_client",
        "max_in_flight_per_replica",
        "health_check",
        "health_interval_s",
        "metrics",
        "metrics_interval_s",
        "max_waiting",
        "max_kv_cache_usage",
    }
)
ANSWER_SECTIONS = ("backends", "routes", "tiering", "defaults")
KEY_VERSION = b"tierline-resume-1\0"


def route_fingerprint(config: Config) -> bytes:
    """A digest of the config sections that decide a job's answer (see the module docstring)."""
    data = config.model_dump(mode="json", include=set(ANSWER_SECTIONS))
    data["backends"] = {
        name: {k: v for k, v in backend.items() if k not in OPERATIONAL}
        for name, backend in data.get("backends", {}).items()
    }
    canonical = orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(KEY_VERSION + canonical, digest_size=16).digest()


def job_key(item: Job | InvalidLine, route: bytes) -> str:
    """The resume key: 128-bit hex digest of the route fingerprint and the job's content.

    An invalid line has no content to hash (it may not even be UTF-8), so its key is its place
    and its error; it costs nothing to redo, the key only keeps it from being written twice.
    """
    h = hashlib.blake2b(route, digest_size=16)
    if isinstance(item, Job):
        h.update(b"job\0" + item.id.encode() + b"\0")
        h.update(orjson.dumps(dict(item.raw), option=orjson.OPT_SORT_KEYS))
    else:
        place = f"{os.path.basename(item.source)}\0{item.line}\0{item.kind}\0{item.error}"
        h.update(b"invalid\0" + place.encode())
    return h.hexdigest()


# Job fields that never reach a backend: two jobs differing only in these get the same answer.
NOT_SENT = frozenset({"id", "custom_id", "metadata", "why", "confidence"})


def answer_key(job: Job, route: bytes) -> str:
    """The dedup and answer-cache key: `job_key` without the job's id and metadata, so jobs that
    would be sent the same request along the same route share it (tierline/dispatch/answers.py).
    The route fingerprint covers the config; the tier is a function of both (an explicit
    `tier` field is part of the content)."""
    h = hashlib.blake2b(route, digest_size=16)
    content = {k: v for k, v in job.raw.items() if k not in NOT_SENT}
    h.update(b"answer\0" + orjson.dumps(content, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    # The rename itself must reach the disk, or a power cut can bring the old name back.
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(end offset, line) for each newline-terminated line; a torn last line is not yielded."""
    offset = 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield offset, line


def _final(line: bytes) -> tuple[str, str, object, object] | None:
    """(key, status, source, line) of a complete, final result line; None for anything else
    (torn, zeroed)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("status") not in DONE_STATUSES:
        return None
    key = record.get("key")
    if not isinstance(key, str) or len(key) != 32:
        return None
    try:
        int(key, 16)
    except ValueError:
        return None
    return key, record["status"], record.get("source"), record.get("line")


def _drop_failed(path: str, tmp: str) -> int:
    """--retry-failed: make `tmp` (PATH.partial) the results of `path` that are ok (or pending),
    so the resume that follows sends only the rest; return how many were dropped.

    An interrupted retry left a newer PATH.partial: that one is filtered instead of PATH. PATH
    itself is never touched: it is replaced by the usual rename when the run ends, so a reader
    sees the old file or the new one, never a mix.
    """
    source = tmp if os.path.exists(tmp) else path
    if not os.path.exists(source):
        raise UsageError(
            f"--retry-failed: {path} does not exist; run once without --retry-failed first"
        )
    dropped = 0
    new = f"{tmp}.retry"
    with open(new, "wb") as out:
        for _end, line in _complete_lines(source):
            final = _final(line)
            if final is None or final[1] not in RETRY_KEEPS:
                dropped += 1
                continue
            out.write(line)
        out.flush()
        os.fsync(out.fileno())
    os.replace(new, tmp)
    _fsync_dir(tmp)
    return dropped


def _place(source: object, line: object) -> int:
    """A small fingerprint of where a result's job was (hash() is stable within a process,
    which is all a resume needs)."""
    return hash((source, line))


def _first_of_each() -> Callable[[str], bool]:
    """A `keep` that passes each key once: a repeated result line is dropped."""
    seen: set[str] = set()

    def keep(key: str) -> bool:
        if key in seen:
            return False
        seen.add(key)
        return True

    return keep


class Journal:
    """Writes result lines durably and remembers which jobs are done, for resume.

    ``path`` None or ``-`` writes to stdout: nothing to resume from there (lines already sent
    down a pipe cannot be taken back), so every run on stdout starts afresh.

    A write that fails (the reader of stdout went away, the disk is full) is not raised into
    the task that produced the result: the error is kept in `error`, `on_error` is called once
    (the run stops dispatching), and later results are dropped, since they cannot be written.
    """

    def __init__(
        self,
        path: str | None,
        config: Config,
        *,
        resume: bool = True,
        retry_failed: bool = False,
        fsync_every: int = FSYNC_EVERY,
        fsync_interval_s: float = FSYNC_INTERVAL_S,
        on_error: Callable[[OSError], None] | None = None,
    ) -> None:
        self.path = None if path in (None, "-") else path
        self.route = route_fingerprint(config)
        self.fsync_every = fsync_every
        self.fsync_interval_s = fsync_interval_s
        self.count = 0
        self.kept = 0  # jobs not dispatched again: their result from the last attempt was kept
        self.kept_failed = 0  # of which failed or invalid
        self.retry_failed = retry_failed
        self.retried = 0  # --retry-failed: results not ok dropped from the last output
        self.error: OSError | None = None  # the first failed write; nothing is written after it
        self.on_error = on_error
        # kept results: key (as an int: smaller than str) -> hash of the (source, line) it was
        # saved with, to notice a job that moved in an edited input
        self._done: dict[int, int] = {}
        self._failed: set[int] = set()  # the kept results that are not "ok"
        self._moved: dict[int, tuple[str, int]] = {}  # kept results whose job moved: new place
        self._unsynced = 0
        self._synced_at = time.monotonic()
        self._tmp: str | None = None
        # Called before each fsync: the ledger syncs its calls first (write-ahead, power cut too)
        self.before_sync: Callable[[], None] | None = None
        if self.path is None:
            self._stream: IO[bytes] = sys.stdout.buffer
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise UsageError(f"cannot write {self.path}: directory {directory} does not exist")
        self._tmp = f"{self.path}.partial"
        try:
            if retry_failed:
                self.retried = _drop_failed(self.path, self._tmp)
            if resume and os.path.exists(self._tmp):
                self._recover(self._tmp)
            self._stream = open(self._tmp, "ab" if resume else "wb")  # noqa: SIM115 - see close()
        except OSError as exc:  # a read-only directory, a full disk: before anything is sent
            raise UsageError(f"cannot write {self._tmp}: {exc.strerror}") from None

    @property
    def partial(self) -> str | None:
        """The file results go to until the run ends (None on stdout)."""
        return self._tmp

    def _recover(self, tmp: str) -> None:
        """Keep every complete final result of the last attempt, each job once; drop torn or
        non-final lines and repeats (a line copied twice by hand or by a tool)."""
        keep_end, dropped = 0, False
        for end, line in _complete_lines(tmp):
            final = _final(line)
            number = None if final is None else int(final[0], 16)
            if final is None or number is None or number in self._done:
                dropped = True
                continue
            if not dropped:
                keep_end = end
            self._done[number] = _place(final[2], final[3])
            if final[1] != "ok":
                self._failed.add(number)
        if dropped:  # a bad line in the middle: rewrite without it
            self._rewrite(tmp, _first_of_each())
        elif os.path.getsize(tmp) != keep_end:  # only a torn tail: cut it off
            os.truncate(tmp, keep_end)

    def _rewrite(
        self,
        tmp: str,
        keep: Callable[[str], bool],
        moved: Mapping[int, tuple[str, int]] | None = None,
    ) -> int:
        """Copy the final results whose key passes `keep` to a new file and swap it in; a
        result in `moved` gets its job's current place (source, line)."""
        dropped = 0
        new = f"{tmp}.resume"
        with open(new, "wb") as out:
            for _end, line in _complete_lines(tmp):
                final = _final(line)
                if final is None or not keep(final[0]):
                    dropped += 1
                    continue
                place = moved.get(int(final[0], 16)) if moved else None
                if place is not None:
                    record = orjson.loads(line)
                    record["source"], record["line"] = place
                    line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
                out.write(line)
            out.flush()
            os.fsync(out.fileno())
        os.replace(new, tmp)
        _fsync_dir(tmp)
        return dropped

    def select(self, items: Iterable[Job | InvalidLine]) -> Iterator[Job | InvalidLine]:
        """Yield the items still to do, each carrying its resume key (its result line's)."""
        for item in items:
            key = job_key(item, self.route)
            number = int(key, 16)
            place = self._done.pop(number, None)  # what is left at the end matches no input
            if place is not None:
                self.kept += 1
                self.kept_failed += number in self._failed
                if place != _place(item.source, item.line):  # the input was edited: renumber
                    self._moved[number] = (item.source, item.line)
                continue
            yield replace(item, key=key)

    def write(self, result: Result) -> None:
        """Append one result line (its key is the job's); fsync by the policy above."""
        if self.error is not None:
            return  # the output is gone: the run is stopping, and this line has nowhere to go
        line = orjson.dumps(result.to_dict(), option=orjson.OPT_APPEND_NEWLINE)
        try:
            self._stream.write(line)
            self._stream.flush()  # one write(2) per result: a kill -9 loses nothing written
        except OSError as exc:
            self._failed_write(exc)
            return
        self.count += 1
        self._unsynced += 1
        if self._tmp is not None and (
            self._unsynced >= self.fsync_every
            or time.monotonic() - self._synced_at >= self.fsync_interval_s
        ):
            self.sync()

    def _failed_write(self, exc: OSError) -> None:
        self.error = exc
        if self.on_error is not None:
            self.on_error(exc)

    def sync(self) -> None:
        """Make every line written so far durable (a no-op on stdout)."""
        if self.error is not None:
            return
        try:
            self._stream.flush()
            if self._tmp is not None and not self._stream.closed:
                if self.before_sync is not None:
                    self.before_sync()
                os.fsync(self._stream.fileno())
        except OSError as exc:
            self._failed_write(exc)
            return
        self._unsynced, self._synced_at = 0, time.monotonic()

    def commit(self) -> int:
        """Sync and move the file into place; return how many stale results were dropped.

        A kept result whose job is no longer in the input (the file was edited, or the shard
        changed) is dropped, so the output holds exactly one line per input job; one whose job
        moved gets its current `source` and `line`.
        """
        self.sync()
        if self._tmp is None or self.path is None:
            return 0
        self._stream.close()
        stale, dropped = self._done, 0
        if stale or self._moved:
            dropped = self._rewrite(self._tmp, lambda key: int(key, 16) not in stale, self._moved)
        os.replace(self._tmp, self.path)
        _fsync_dir(self.path)
        self._tmp = None
        return dropped

    def close(self) -> None:
        """Sync and close without committing: the `.partial` file stays for the next attempt."""
        if self._tmp is not None and not self._stream.closed:
            self.sync()
            with contextlib.suppress(OSError):  # a full disk: what was written is kept
                self._stream.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _lock_path(output: str | None) -> str | None:
    """Beside the output file; for stdout redirected to a file, in the data dir by its inode."""
    if output not in (None, "-"):
        return f"{output}.lock"
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (captured by a test harness)
        return None
    import stat

    if not stat.S_ISREG(st.st_mode):
        return None  # a pipe or a terminal is this run's alone
    return str(data_dir() / "locks" / f"stdout-{st.st_dev}-{st.st_ino}.lock")


class RunLock:
    """An advisory lock (flock) on the output, so two runs (say, overlapping cron entries)
    never write the same file. The second one fails at once with `LockedError` (exit 5).

    The lock file is removed on release; the inode check in `acquire` makes that safe against
    a run that opened the file just before it was removed.
    """

    ATTEMPTS = 10

    def __init__(self, output: str | None) -> None:
        self.output = output
        self.path = _lock_path(output)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self.path is None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no flock, no lock
            return
        for _ in range(self.ATTEMPTS):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                what = self.output if self.output not in (None, "-") else "this output"
                raise LockedError(
                    f"{what} is being written by another tierline run ({holder}); "
                    f"wait for it to finish or write elsewhere (lock: {self.path})"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                os.write(fd, f"pid {os.getpid()}, since {stamp}\n".encode())
                self._fd = fd
                return
            os.close(fd)  # the holder removed it as we opened it: take the new one
        raise LockedError(f"cannot take the lock {self.path}: it keeps changing")

    def _open(self) -> int:
        assert self.path is not None
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only directory, TIERLINE_HOME a file: before any call
            hint = (
                "write the results elsewhere"
                if self.output not in (None, "-")
                else "set TIERLINE_HOME to a writable directory"
            )
            raise UsageError(
                f"cannot create the lock {self.path}: {exc.strerror}; {hint}"
            ) from None

    def release(self) -> None:
        if self._fd is None or self.path is None:
            return
        # Remove before unlocking: a waiter that opened the old file sees the inode change.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
