"""The actor side: one tierline dispatcher per Ray actor, fed by Ray Data's `map_batches`.

`Dispatcher` is the callable class given to `map_batches` with an actor pool. Its `__call__` is
an async generator, so Ray Data runs it on one event loop per actor (several batches at once on
that loop): one router with the configured backends (their HTTP clients and replica state live
as long as the actor), one in-flight window, the actor's share of the limits
(tierline/ray/limits.py) and a lease on the run's budget (tierline/ray/state.py).

Each output row is one job: its resume `key`, its result line (`result`, JSON) and the ledger
rows of its calls (`calls`, JSON). Rows leave in small chunks as jobs finish.

Under `tierline run --engine ray` (`fragments` given) each actor also records every call in
its own ledger fragment as the call completes, and each job's result line as it is answered
(in the same group commit, after the job's calls), all committed before any result leaves the
actor: that file, not the returned `calls`, is what reaches the ledger, so an actor killed
mid-block loses no paid call (tierline/ray/fragments.py). A block starts by looking its jobs
up in the run's fragments: a block Ray retries after an actor died reuses the answers the dead
actor stored instead of paying for them again; only its calls in flight are sent again. The
actors also read the driver's stop flag (tierline/ray/state.py): once set, no new call starts.

Under the CLI each actor also watches its driver's life (`DriverWatch`, before each call and
every 0.1 s): an actor whose driver died (SIGKILL, a lost machine) starts no call, lets those
in flight finish for the run's grace period (then abandons them), commits, and releases its
fragment's lock, which the rerun waits for before it reads the stored answers: a rerun started
while Ray has not yet stopped the old actors pays nothing they paid (fragments.py).

A library user's `dispatch` has only the returned rows: the calls of a killed actor's
unreturned results are not in them, and a retried block sends its jobs again.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from ..config import Config
from ..dispatch.router import Router
from ..errors import JobError
from ..interrupts import DEFAULT_GRACE_S
from ..jobs import InvalidLine, Job, Result, parse_line
from ..ledger.accounting import Accountant
from ..ledger.store import CallRecord, Ledger
from ..resume import DONE_STATUSES, job_key, route_fingerprint
from ..run.dispatcher import Dispatcher as JobDispatcher
from ..tiering.pipeline import Tierer
from ..tiering.vote import TierVote
from .fragments import ActorFragment, DriverWatch, StoredResults, open_actor_fragment
from .limits import split_limits
from .state import STOP_POLL_S, LeasedBudget

__all__ = ["CallCapture", "Dispatcher", "calls_from_json"]

CHUNK = 64  # results per output chunk ...
CHUNK_S = 0.5  # ... or this often, whichever first: the driver sees progress, a retry skips more
Answer = tuple[dict[str, Any], str]  # a job's result record and its JSON line
COLUMNS = ("key", "id", "line", "source", "status", "output", "cost_usd", "result", "calls")


class CallCapture(Ledger):
    """A ledger that keeps each job's call rows in memory until its result leaves the actor.

    The Accountant writes through `record_call` exactly as in a local run; the rows go out
    with the result, and into `fragment` (this actor's ledger file) when there is one."""

    def __init__(self, fragment: ActorFragment | None = None) -> None:
        super().__init__(":memory:")
        self.fragment = fragment
        self.by_job: dict[str | None, list[CallRecord]] = {}

    def record_call(self, run_id: str, call: CallRecord) -> None:
        if self.fragment is not None:
            self.fragment.record_call(run_id, call)  # committed within milliseconds
        self.by_job.setdefault(call.job_id, []).append(call)

    def record_result(self, run_id: str, key: str, line: str) -> None:
        if self.fragment is not None:  # in the same group commit as the job's calls
            self.fragment.record_result(run_id, key, line)

    async def durable(self) -> None:
        """Every call so far committed: the group commit each job waits for, as in a local run."""
        if self.fragment is not None:
            await self.fragment.durable()

    def sync(self) -> None:
        """Every committed call's WAL fsynced: once per chunk of results, before it leaves the
        actor. Per job (as before), each job's own one-row commit and fsync blocked the event
        loop: no group commit, and on a disk whose fsync takes milliseconds, a cap of a few
        hundred jobs/s per actor."""
        if self.fragment is not None:
            self.fragment.sync()

    def take(self, job_id: str | None) -> list[CallRecord]:
        return self.by_job.pop(job_id, [])


def calls_to_json(calls: list[CallRecord]) -> str:
    # orjson writes dataclasses itself, the same bytes as via `dataclasses.asdict`, 10x faster
    return orjson.dumps(calls).decode()


def calls_from_json(text: str) -> list[CallRecord]:
    from ..jobs import Usage

    return [CallRecord(**{**row, "usage": Usage(**row["usage"])}) for row in orjson.loads(text)]


def _job_of(row: Mapping[str, Any]) -> Job | InvalidLine:
    """A row of the CLI's dataset (`job`: the line's JSON, `line`, `source`) or a library user's
    (the job's own fields, as `ray.data.read_json` gives them; nulls are absent fields)."""
    line = int(row.get("line") or 0)
    source = str(row.get("source") or "<ray>")
    if "job" in row and isinstance(row["job"], str | bytes):
        raw = row["job"] if isinstance(row["job"], bytes) else row["job"].encode()
    else:
        fields = {k: v for k, v in row.items() if v is not None and k not in ("line", "source")}
        raw = orjson.dumps(fields)
    try:
        return parse_line(raw, line, source)
    except JobError as exc:
        return InvalidLine(line, source, str(exc), None, exc.kind)


class Dispatcher:
    """The `map_batches` callable class (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        run_id: str | None = None,
        state: Any = None,
        actors: int = 1,
        window: int | None = None,
        cap_micros: int | None = None,
        fragments: str | None = None,
        watch_driver: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> None:
        self.fragments = fragments  # the run directory of actor ledgers (engine.py), if any
        self.watch_driver = watch_driver  # the CLI's driver locks the run directory's marker
        self.grace_s = grace_s  # for calls in flight when the driver died
        self.driver: DriverWatch | None = None
        self.sending: set[asyncio.Task[Any]] = set()  # jobs past their last stop check
        self._standing_down: asyncio.Future[None] | None = None
        self.config = split_limits(config, actors)
        self.actors = actors
        self.run_id = run_id or "ray"
        self.state = state
        self.route = route_fingerprint(config)  # of the run's config: the split is operational
        self.window = window or min(
            1024, 2 * sum(b.max_concurrency for b in self.config.backends.values())
        )
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.cap_micros = cap_micros  # --max-cost, leased from `state` in chunks
        self.stopping = False  # the driver asked the run to stop: no new call
        self.stored: StoredResults | None = None
        self._ready = False

    def _start(self) -> None:
        """Made on the actor's event loop, at its first batch (HTTP clients bind to a loop)."""
        budget = None
        if self.cap_micros is not None and self.state is not None:
            # a lease chunk: an eighth of each actor's even share, so a reservation rarely
            # waits for a round trip and little headroom is held by any one actor
            chunk = self.cap_micros // (8 * max(1, self.actors))
            budget = LeasedBudget(
                self.state, self.name, cap_micros=self.cap_micros, chunk_micros=chunk
            )
        self.budget = budget
        fragment = None
        if self.fragments is not None:  # before any call: refuses if the disk is not shared
            fragment = open_actor_fragment(self.fragments, self.run_id, self.name)
            self.stored = StoredResults([Path(self.fragments)])
            if self.watch_driver:  # after the lock is held: a rerun that looked since waits
                self.driver = DriverWatch(Path(self.fragments))
        self.capture = CallCapture(fragment)
        self.router = Router(self.config)
        accountant = Accountant(self.config, ledger=self.capture, run_id=self.run_id, budget=budget)
        self.dispatcher = JobDispatcher(self.config, self.router, accountant)
        self.tierer = Tierer.from_config(self.config.tiering)
        self.slots = asyncio.Semaphore(self.window)
        if self.state is not None:
            import ray

            self.state.register.remote(ray.get_runtime_context().current_actor)
            if self.fragments is not None:  # the CLI's run: the driver may ask it to stop
                self._watcher = asyncio.ensure_future(self._watch())
        self._ready = True

    async def _watch(self) -> None:
        """Read the driver's stop flag while blocks run (a block's queued jobs then end early),
        and watch the driver's life."""
        while not self.stopping:
            await asyncio.sleep(STOP_POLL_S)
            if self._orphaned():
                break
            try:
                self.stopping = await self.state.stopping.remote()
            except Exception:  # the run state died, with its driver
                self.stopping = self._orphaned() or self.stopping
        while self.driver is not None and not self.driver.gone:  # stopped: its driver may die
            await asyncio.sleep(STOP_POLL_S)
            self._orphaned()

    def _orphaned(self) -> bool:
        """True once the driver is gone; the first time, the actor stands down."""
        if self.driver is None or self.driver.gone:
            return self.driver is not None
        if self.driver.check():
            self.stopping = True
            self._standing_down = asyncio.ensure_future(self._stand_down())
        return self.driver.gone

    async def _stand_down(self) -> None:
        """The driver died: no call starts (`stopping`); those in flight get the grace period,
        then are abandoned; what was paid and answered is committed; then the fragment's lock
        goes, telling a rerun that this actor will pay nothing more (fragments.py)."""
        if self.sending:
            await asyncio.wait(set(self.sending), timeout=self.grace_s)
        for task in set(self.sending):
            task.cancel()
        if self.sending:
            await asyncio.wait(set(self.sending))
        await self.capture.durable()
        self.capture.sync()
        if self.capture.fragment is not None:
            self.capture.fragment.release()

    async def __call__(self, batch: Any) -> AsyncIterator[dict[str, list[Any]]]:
        if not self._ready:
            self._start()
        rows = batch.to_pylist()
        items = [_job_of(row) for row in rows]
        keys = [
            row.get("key") or job_key(item, self.route)
            for row, item in zip(rows, items, strict=True)
        ]
        if self.stored is not None and self.state is not None:
            if not self.stopping and not self._orphaned():  # as each block starts (and `_watch`)
                self.stopping = await self.state.stopping.remote()
            # a retried block (its actor died) or a later pass: what is answered is reused
            found = self.stored.find(keys)
            if found:
                reused = [(orjson.loads(found[k]), found[k]) for k in keys if k in found]
                yield await self._emit(reused, reused=True)
                items = [i for i, k in zip(items, keys, strict=True) if k not in found]
                keys = [k for k in keys if k not in found]
        if self.stopping:
            return
        # tiered as one batch, off the event loop (the classifier's cost is per call)
        jobs = [item for item in items if isinstance(item, Job)]
        votes = iter(await asyncio.to_thread(self.tierer.tier_batch, jobs))
        pending = {
            asyncio.ensure_future(
                self._one(item, None if isinstance(item, InvalidLine) else next(votes), key)
            )
            for item, key in zip(items, keys, strict=True)
        }
        try:
            while pending:
                chunk: list[Answer] = []
                while pending and len(chunk) < CHUNK:
                    done_now, pending = await asyncio.wait(
                        pending, timeout=CHUNK_S, return_when=asyncio.FIRST_COMPLETED
                    )
                    # None: not sent, the run is stopping (the rerun sends it)
                    # (cancelled: abandoned after the driver died, see _stand_down)
                    chunk += [
                        a for t in done_now if not t.cancelled() and (a := t.result()) is not None
                    ]
                    if not done_now:
                        break
                if chunk:
                    yield await self._emit(chunk)
        finally:
            for task in pending:
                task.cancel()
            if self.budget is not None:
                self.budget.give_back()

    async def _one(self, item: Job | InvalidLine, vote: TierVote | None, key: str) -> Answer | None:
        """The job's result (record and line, its resume key included), stored in the fragment
        as soon as it is known; None when the run stopped before the job was sent."""
        if isinstance(item, InvalidLine):
            result = Result.invalid(item)
        else:
            assert vote is not None  # every job of the block was tiered (__call__)
            async with self.slots:
                if self.stopping or self._orphaned():  # the driver's life: one syscall
                    return None
                task = asyncio.current_task()
                assert task is not None
                self.sending.add(task)
                try:
                    sent = await self.dispatcher.send(item, vote)
                    assert sent is not None  # no provider batches on Ray (engine.py refuses)
                    return self._answered(sent, key)
                finally:
                    self.sending.discard(task)
        return self._answered(result, key)

    def _answered(self, result: Result, key: str) -> Answer:
        record = {**result.to_dict(), "key": key}
        line = orjson.dumps(record).decode()
        if result.status in DONE_STATUSES:  # a budget skip is decided again, at no cost
            self.capture.record_result(self.run_id, key, line)
        return record, line

    async def _emit(self, chunk: list[Answer], *, reused: bool = False) -> dict[str, list[Any]]:
        """The output rows of `chunk`, once their calls and answers are committed. A reused
        answer's calls were recorded by the actor that paid for them."""
        await self.capture.durable()
        self.capture.sync()
        out: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for record, line in chunk:
            for name in ("key", "id", "line", "source", "status", "output", "cost_usd"):
                out[name].append(record[name])
            out["result"].append(line)
            calls = [] if reused else self.capture.take(record["id"])
            out["calls"].append(calls_to_json(calls))
        return out
