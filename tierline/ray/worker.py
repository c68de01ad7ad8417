"""The actor side: one tierline dispatcher per Ray actor, fed by Ray Data's `map_batches`.

`Dispatcher` is the callable class given to `map_batches` with an actor pool. Its `__call__` is
an async generator, so Ray Data runs it on one event loop per actor (several batches at once on
that loop): one router with the configured backends (their HTTP clients and replica state live
as long as the actor), one in-flight window, the actor's share of the limits
(tierline/ray/limits.py) and a lease on the run's budget (tierline/ray/state.py).

Each output row is one job: its resume `key`, its result line (`result`, JSON) and the ledger
rows of its calls (`calls`, JSON). Rows leave in small chunks as jobs finish, each chunk's keys
marked answered first: a block retried after the actor died skips them.

Under `tierline run --engine ray` (`fragments` given) each actor also records every call in
its own ledger fragment as the call completes, and commits it before any result leaves the
actor: that file, not the returned `calls`, is what reaches the ledger, so an actor killed
mid-block loses no paid call (tierline/ray/fragments.py). A library user's `dispatch` has only
the returned rows: the calls of a killed actor's unreturned results are not in them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from ..config import Config
from ..dispatch.router import Router
from ..errors import JobError
from ..jobs import InvalidLine, Job, Result, parse_line
from ..ledger.accounting import Accountant
from ..ledger.store import CallRecord, Ledger
from ..resume import job_key, route_fingerprint
from ..run.dispatcher import Dispatcher as JobDispatcher
from ..tiering.pipeline import Tierer
from ..tiering.vote import TierVote
from .fragments import open_actor_fragment
from .limits import split_limits
from .state import LeasedBudget

__all__ = ["CallCapture", "Dispatcher", "calls_from_json"]

CHUNK = 64  # results per output chunk ...
CHUNK_S = 0.5  # ... or this often, whichever first: the driver sees progress, a retry skips more
COLUMNS = ("key", "id", "line", "source", "status", "output", "cost_usd", "result", "calls")


class CallCapture(Ledger):
    """A ledger that keeps each job's call rows in memory until its result leaves the actor.

    The Accountant writes through `record_call` exactly as in a local run; the rows go out
    with the result, and into `fragment` (this actor's ledger file) when there is one."""

    def __init__(self, fragment: Ledger | None = None) -> None:
        super().__init__(":memory:")
        self.fragment = fragment
        self.by_job: dict[str | None, list[CallRecord]] = {}

    def record_call(self, run_id: str, call: CallRecord) -> None:
        if self.fragment is not None:
            self.fragment.record_call(run_id, call)  # committed within milliseconds
        self.by_job.setdefault(call.job_id, []).append(call)

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
    return orjson.dumps([dataclasses.asdict(c) for c in calls]).decode()


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
    ) -> None:
        self.fragments = fragments  # the run directory of actor ledgers (engine.py), if any
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
        self.capture = CallCapture(fragment)
        self.router = Router(self.config)
        accountant = Accountant(self.config, ledger=self.capture, run_id=self.run_id, budget=budget)
        self.dispatcher = JobDispatcher(self.config, self.router, accountant)
        self.tierer = Tierer.from_config(self.config.tiering)
        self.slots = asyncio.Semaphore(self.window)
        if self.state is not None:
            import ray

            self.state.register.remote(ray.get_runtime_context().current_actor)
        self._ready = True

    async def __call__(self, batch: Any) -> AsyncIterator[dict[str, list[Any]]]:
        if not self._ready:
            self._start()
        rows = batch.to_pylist()
        items = [_job_of(row) for row in rows]
        keys = [
            row.get("key") or job_key(item, self.route)
            for row, item in zip(rows, items, strict=True)
        ]
        if self.state is not None:  # a retried block: skip what a dead actor already answered
            done = await self.state.answered.remote(keys)
            items = [i for i, d in zip(items, done, strict=True) if not d]
            keys = [k for k, d in zip(keys, done, strict=True) if not d]
        # tiered as one batch, off the event loop (the classifier's cost is per call)
        jobs = [item for item in items if isinstance(item, Job)]
        votes = iter(await asyncio.to_thread(self.tierer.tier_batch, jobs))
        tasks = {
            asyncio.ensure_future(
                self._one(item, None if isinstance(item, InvalidLine) else next(votes))
            ): key
            for item, key in zip(items, keys, strict=True)
        }
        pending = set(tasks)
        try:
            while pending:
                chunk: list[tuple[str, Result]] = []
                while pending and len(chunk) < CHUNK:
                    done_now, pending = await asyncio.wait(
                        pending, timeout=CHUNK_S, return_when=asyncio.FIRST_COMPLETED
                    )
                    chunk += [(tasks[t], t.result()) for t in done_now]
                    if not done_now:
                        break
                if chunk:
                    yield await self._emit(chunk)
        finally:
            for task in pending:
                task.cancel()
            if self.budget is not None:
                self.budget.give_back()

    async def _one(self, item: Job | InvalidLine, vote: TierVote | None) -> Result:
        if isinstance(item, InvalidLine):
            return Result.invalid(item)
        assert vote is not None  # every job of the block was tiered (__call__)
        async with self.slots:
            result = await self.dispatcher.send(item, vote)
        assert result is not None  # no provider batches on Ray (engine.py refuses them)
        return result

    async def _emit(self, chunk: list[tuple[str, Result]]) -> dict[str, list[Any]]:
        keys = [key for key, _ in chunk]
        await self.capture.durable()
        self.capture.sync()
        if self.state is not None:
            await self.state.mark.remote(keys)
        out: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for key, result in chunk:
            record = {**result.to_dict(), "key": key}
            for name in ("key", "id", "line", "source", "status", "output", "cost_usd"):
                out[name].append(record[name])
            out["result"].append(orjson.dumps(record).decode())
            out["calls"].append(calls_to_json(self.capture.take(result.id)))
        return out
