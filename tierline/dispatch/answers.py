"""Never pay twice for one answer: in-run dedup and the answer cache across runs.

Both are keyed by `resume.answer_key`: the job's content without its id and metadata, and the
route fingerprint of the config. docs/cache.md has the rules; in short:

* **dedup**: a job identical to one in flight waits for it; one identical to a job finished
  earlier in the run (the last `[dedup] keep` distinct answers, an LRU) copies its answer. The
  copy is its own result line (own id, line, metadata) with `dedup_of` naming the job that was
  sent, `cost_usd` 0, empty usage and route: the ledger holds the sent job's calls once, so sums
  over results and over the ledger both stay exact.
* **cache**: an `ok` answer (its checks passed) is stored in a SQLite file; a later run with the
  same key within the TTL gets it back with `cached: true` and cost 0, without a call.
* Sampled jobs (temperature > 0, or unset: the backend's default) share nothing unless
  `[dedup] sampled = true`: two samples are meant to differ.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from ..config import CacheConfig, Config, data_dir
from ..errors import UsageError
from ..jobs import CACHED, InvalidLine, Job, Result
from ..resume import answer_key, route_fingerprint

__all__ = ["AnswerCache", "Answers", "cache_path"]

BUSY_TIMEOUT_MS = 10_000  # another run holds the write lock: wait, it only inserts one row


class AnswerCache:
    """A SQLite file of `ok` answers by key, with a TTL and a size bound.

    WAL mode and a busy timeout let overlapping runs share it. Each insert is its own
    transaction, so a kill -9 loses at most the row being written, never half of one. The size
    bound counts stored bytes (answer + key): it is enforced when the cache opens, after every
    1/16 of it is written, and at close, by deleting the oldest rows (expired ones first).
    """

    def __init__(self, path: Path, *, ttl_s: float, max_bytes: int) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.hits = self.misses = self.stored = self.evicted = 0
        self._written = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")  # a process crash loses nothing
            self.conn.execute(
                """CREATE TABLE IF NOT EXISTS answers (
                       key TEXT PRIMARY KEY, created REAL NOT NULL, size INTEGER NOT NULL,
                       answer BLOB NOT NULL) WITHOUT ROWID"""
            )
            self.conn.execute("CREATE INDEX IF NOT EXISTS answers_created ON answers(created)")
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(f"cannot open the answer cache {path}: {exc}") from None
        self.evict()

    @classmethod
    def from_config(cls, config: CacheConfig, path: str | None = None) -> AnswerCache:
        where = cache_path(config, path)
        return cls(where, ttl_s=config.ttl_s, max_bytes=int(config.max_mb * 1024 * 1024))

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT answer FROM answers WHERE key = ? AND created >= ?",
            (key, time.time() - self.ttl_s),
        ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        answer: dict[str, Any] = orjson.loads(row[0])
        return answer

    def put(self, key: str, answer: dict[str, Any]) -> None:
        blob = orjson.dumps(answer)
        size = len(blob) + len(key)
        try:
            self.conn.execute(
                "INSERT OR REPLACE INTO answers (key, created, size, answer) VALUES (?, ?, ?, ?)",
                (key, time.time(), size, blob),
            )
        except sqlite3.Error:  # a full disk, a lock held too long: the answer is still written
            return
        self.stored += 1
        self._written += size
        if self._written * 16 >= self.max_bytes:
            self.evict()

    def evict(self) -> None:
        """Drop expired rows, then the oldest until the stored bytes fit the bound."""
        self._written = 0
        try:
            cur = self.conn.execute(
                "DELETE FROM answers WHERE created < ?", (time.time() - self.ttl_s,)
            )
            self.evicted += max(cur.rowcount, 0)
            total = self.conn.execute("SELECT COALESCE(SUM(size), 0) FROM answers").fetchone()[0]
            if total <= self.max_bytes:
                return
            over, cutoff, count = total - self.max_bytes, None, 0
            for created, size in self.conn.execute(
                "SELECT created, size FROM answers ORDER BY created"
            ):
                over, cutoff, count = over - size, created, count + 1
                if over <= 0:
                    break
            cur = self.conn.execute("DELETE FROM answers WHERE created <= ?", (cutoff,))
            self.evicted += max(cur.rowcount, 0)
        except sqlite3.Error:  # busy past the timeout: the next check tries again
            return

    def close(self) -> None:
        self.evict()
        self.conn.close()


def cache_path(config: CacheConfig, path: str | None = None) -> Path:
    """Where the answer cache is: --cache, else `[cache] path`, else the data dir."""
    return Path(path or config.path or data_dir() / "cache.sqlite").expanduser()


class Answers:
    """In front of the dispatcher: the answer a job can reuse instead of being sent."""

    def __init__(self, config: Config, cache: AnswerCache | None, *, dedup: bool = True) -> None:
        self.route = route_fingerprint(config)
        self.dedup = dedup and config.dedup.enabled
        self.sampled = config.dedup.sampled
        self.temperature = config.defaults.temperature
        self.keep = config.dedup.keep
        self.cache = cache
        self.unshared = 0  # jobs not eligible: sampled
        self._flight: dict[str, asyncio.Future[Result | None]] = {}
        # Memory bound: `keep` finished results (LRU) plus one future per job in flight.
        self._done: OrderedDict[str, Result] = OrderedDict()

    @property
    def active(self) -> bool:
        return self.dedup or self.cache is not None

    def key(self, job: Job) -> str | None:
        """The job's answer key, or None when it may not share an answer (sampled)."""
        if not self.active:
            return None
        temperature = job.temperature if job.temperature is not None else self.temperature
        if not self.sampled and (temperature is None or temperature > 0):
            self.unshared += 1
            return None
        return answer_key(job, self.route)

    @classmethod
    def or_off(cls, answers: Answers | None, config: Config) -> Answers:
        """`answers`, or one that reuses nothing (it still turns invalid lines into results)."""
        return cls(config, None, dedup=False) if answers is None else answers

    def lookup(self, item: Job | InvalidLine) -> tuple[str | None, Result | None]:
        """The job's key (None: it shares nothing) and a result it needs no call for: a
        finished answer it can reuse, or an invalid line's error."""
        if isinstance(item, InvalidLine):
            return None, Result.invalid(item)
        key = self.key(item)
        return key, None if key is None else self.known(item, key)

    def known(self, job: Job, key: str) -> Result | None:
        """A finished answer for `key` (this run's, then the cache's), copied for `job`."""
        sent = self._done.get(key) if self.dedup else None
        if sent is not None:
            self._done.move_to_end(key)
            return sent.copied(job)
        if self.cache is not None and key not in self._flight:
            answer = self.cache.get(key)
            if answer is not None:
                return Result.from_cache(answer, job)
        return None

    async def answer(
        self, job: Job, key: str | None, send: Callable[[Job], Awaitable[Result | None]]
    ) -> Result | None:
        """`job`'s result: a copy of an identical job's answer, or `send(job)`'s."""
        if key is None:
            return await send(job)
        copy = await self.claim(job, key)
        if copy is not None:
            return copy
        result = None
        try:
            result = await send(job)
        finally:  # cancelled or failed: the jobs waiting on this key send their own
            self.finish(key, result)
        return result

    async def claim(self, job: Job, key: str) -> Result | None:
        """Wait for an identical job in flight and return a copy of its answer; else take the
        key (the caller sends the job, then calls `finish`) and return None."""
        if not self.dedup:
            return None
        while (first := self._flight.get(key)) is not None:
            # shielded: a waiter cancelled by Ctrl-C must not cancel the others' wait
            sent = await asyncio.shield(first)
            if sent is not None:
                return sent.copied(job)
        again = self.known(job, key)  # it finished while this job waited for a slot
        if again is not None:
            return again
        self._flight[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: str, result: Result | None) -> None:
        """The job sent for `key` is done (None: no answer, cancelled or diverted)."""
        first = self._flight.pop(key, None)
        if first is not None and not first.done():
            first.set_result(result)
        if result is None:
            return
        if self.dedup and self.keep:
            self._done[key] = result
            if len(self._done) > self.keep:
                self._done.popitem(last=False)
        if self.cache is not None and result.status == "ok":  # ok: its checks passed
            self.cache.put(key, {name: getattr(result, name) for name in CACHED})
