"""The run loop: stream jobs, tier them a chunk at a time on a worker thread, dispatch with a
bounded number in flight, and hand each result to a sink as it completes.

Three stages share the event loop and a bounded queue between the first two:

    read (dedup / cache / invalid lines answered here) --queue--> tier (to_thread, per chunk)
        --> one task per job, at most `window` in flight --> sink

Tiering runs off the event loop, so a slow classifier or an enabled judge never stalls the
calls in flight; it scores whatever jobs are ready, up to TIER_CHUNK at once, since its cost is
per batch. Memory is bounded by the queue and the in-flight window, not the input size.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

from ..config import Config
from ..dispatch.answers import Answers
from ..dispatch.base import Backend
from ..dispatch.batch.divert import BatchDiverter
from ..dispatch.router import Router
from ..interrupts import Stop
from ..jobs import InvalidLine, Job, Result
from ..ledger.accounting import Accountant
from ..ledger.budget import Budget
from ..ledger.store import Ledger
from ..tiering.pipeline import Tierer
from ..tiering.vote import TierVote
from .dispatcher import Dispatcher
from .tally import DEFAULT_NOTE, RunSummary, Tally

__all__ = ["TIER_CHUNK", "Sink", "dispatch_chunk", "run_jobs"]

Sink = Callable[[Result], None]

# Jobs tiered per trip to the worker thread (at most; fewer when fewer are ready): the
# classifier's cost is per call, and a chunk this size is scored in a few milliseconds.
TIER_CHUNK = 256

_Entry = tuple[Job, str | None]  # a job to tier and send, with its answer key (dedup / cache)


async def run_jobs(
    items: Iterable[Job | InvalidLine],
    *,
    config: Config,
    sink: Sink,
    tierer: Tierer | None = None,
    ledger: Ledger | None = None,
    run_id: str | None = None,
    max_in_flight: int | None = None,
    read_in_thread: bool = False,
    backends: Mapping[str, Backend] | None = None,
    stop: Stop | None = None,
    budget: Budget | None = None,
    divert: BatchDiverter | None = None,
    answers: Answers | None = None,
    tally: Tally | None = None,
) -> RunSummary:
    """Tier and dispatch every item; call `sink` once per input item, in completion order.

    `tierer` defaults to the config's pipeline (`Tierer.from_config(config.tiering)`). With
    `ledger` and `run_id`, every call is recorded (write-ahead: a result reaches `sink` only
    once its calls are durable). `budget` refuses jobs whose worst case does not fit.

    With `answers`, a job that can reuse an answer (an identical job's in this run, or the
    answer cache's) is not sent (dispatch/answers.py).

    With `divert`, jobs bound for provider batches are packed and submitted by it; it emits
    their (pending or final) results through the same sink.

    With `stop`, a stop request (SIGINT/SIGTERM) ends reading, and in-flight jobs get its grace
    period before being cancelled; a cancelled job emits nothing (a resume redoes it).

    `tally` (a fresh one by default) counts the results as they are emitted: a caller that
    passes its own still has the counts when the run ends on an exception.
    """
    started = time.perf_counter()
    router = Router(config, backends)  # warmed before the first send (Dispatcher.send)
    accountant = Accountant(config, ledger=ledger, run_id=run_id, budget=budget)
    window = max_in_flight or min(
        1024, sum(b.max_concurrency for b in config.backends.values()) * 2
    )
    loop = _Loop(
        Dispatcher(config, router, accountant, divert),
        tierer if tierer is not None else Tierer.from_config(config.tiering),
        Answers.or_off(answers, config),
        sink,
        window,
        stop,
        tally if tally is not None else Tally(),
    )
    if divert is not None:
        divert.bind(loop.emit)
    try:
        await loop.run(items, read_in_thread=read_in_thread)
        if divert is not None and not loop.stopped():
            await divert.finish()  # an interrupted run leaves unsent jobs to the resume
    finally:
        await router.aclose()
        if divert is not None:
            await divert.aclose()
    notes = ([DEFAULT_NOTE] if config.is_default else []) + accountant.notes()
    notes += _reuse_notes(loop.tally, answers)
    return RunSummary(run_id, config.origin, loop.tally, time.perf_counter() - started, notes)


class _Loop:
    """The three stages of one run (see the module docstring) and what they share."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        tierer: Tierer,
        reuse: Answers,
        sink: Sink,
        window: int,
        stop: Stop | None,
        tally: Tally,
    ) -> None:
        self.dispatcher = dispatcher
        self.tierer = tierer
        self.reuse = reuse
        self.sink = sink
        self.stop = stop
        self.tally = tally
        self.slots = asyncio.Semaphore(window)
        self.in_flight: set[asyncio.Task[None]] = set()
        self.feed: asyncio.Queue[_Entry | None] = asyncio.Queue(maxsize=TIER_CHUNK)
        self.failure: Exception | None = None  # a bug in one job's path: the run re-raises it

    def emit(self, result: Result) -> None:
        self.tally.add(result)
        self.sink(result)

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.requested

    async def run(self, items: Iterable[Job | InvalidLine], *, read_in_thread: bool) -> None:
        reader = asyncio.create_task(self.read(items, read_in_thread))
        try:
            await self.tier_and_send()
            if not self.stopped() and self.failure is None:
                await reader  # re-raises what reading raised
            if self.in_flight and self.stop is not None:
                await self.stop.drain(self.in_flight)
            elif self.in_flight:
                await asyncio.gather(*self.in_flight)
            if self.failure is not None:
                raise self.failure
        finally:
            reader.cancel()
            for task in self.in_flight:
                task.cancel()

    async def read(self, items: Iterable[Job | InvalidLine], in_thread: bool) -> None:
        """Feed the jobs to send (at most TIER_CHUNK queued: the read-ahead that lets the
        tier stage score whole chunks); answer the rest (invalid lines, reused answers) at
        once."""
        iterator = iter(items)
        try:
            while True:
                # A pipe on stdin may block: read it on a thread so in-flight calls keep moving.
                item = (
                    await asyncio.to_thread(next, iterator, None)
                    if in_thread
                    else next(iterator, None)
                )
                if item is None or self.stopped():
                    break
                key, known = self.reuse.lookup(item)
                if known is not None:
                    self.emit(known)
                    continue
                assert isinstance(item, Job)
                await self.feed.put((item, key))
        except BaseException:
            # Failed or cancelled: what is queued will not be sent; the tier stage must still
            # see the end (and the run re-raises this when it awaits the reader).
            while not self.feed.empty():
                self.feed.get_nowait()
            self.feed.put_nowait(None)
            raise
        await self.feed.put(None)

    async def tier_and_send(self) -> None:
        """Tier the queued jobs a chunk at a time, then start one task per job as the
        in-flight window allows; return at the end of the input or on a stop request.
        While this waits for slots, the reader fills the queue: the next chunk is a full one."""
        async for entries, votes in _tiered(self.feed, self.tierer):
            for (job, key), vote in zip(entries, votes, strict=True):
                if self.stopped() or not await _slot(self.slots, self.stop):
                    return
                if self.failure is not None:
                    self.slots.release()
                    return
                task = asyncio.create_task(self.one(job, vote, key))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)

    async def one(self, job: Job, vote: TierVote, key: str | None) -> None:
        try:
            send = self.dispatcher.send
            result = await self.reuse.answer(job, key, lambda j: send(j, vote))
            if result is not None:
                self.emit(result)
        except Exception as exc:
            # A bug in this job's path (a plugin's backend factory, say): it has no result to
            # write, so the run sends nothing more, lets the calls in flight finish (they are
            # paid) and re-raises it: exit 70, the results so far kept for a resume. Left to
            # end the task, it was dropped with the task: the job vanished and the run said 0.
            if self.failure is None:
                self.failure = exc
        finally:
            self.slots.release()


async def _tiered(
    feed: asyncio.Queue[_Entry | None], tierer: Tierer
) -> AsyncIterator[tuple[list[_Entry], list[TierVote]]]:
    """The queued jobs a chunk at a time (what is ready, up to TIER_CHUNK), each chunk with its
    votes, scored on a worker thread."""
    done = False
    while not done:
        first = await feed.get()
        if first is None:
            return
        entries = [first]
        while len(entries) < TIER_CHUNK and not feed.empty():
            entry = feed.get_nowait()
            if entry is None:
                done = True
                break
            entries.append(entry)
        votes = await asyncio.to_thread(tierer.tier_batch, [job for job, _ in entries])
        yield entries, votes


async def _slot(slots: asyncio.Semaphore, stop: Stop | None) -> bool:
    """Wait for room in the in-flight window; False when a stop request came first."""
    if stop is None:
        await slots.acquire()
        return True
    return await stop.acquire(slots)


def _reuse_notes(tally: Tally, answers: Answers | None) -> list[str]:
    notes = []
    if tally.deduped:
        notes.append(f"dedup: {tally.deduped} job(s) copied an identical job's answer, not sent")
    if answers is not None and answers.cache is not None:
        notes.append(f"cache: {tally.cached} hit(s), not sent ({answers.cache.path})")
    if answers is not None and answers.active and answers.unshared:
        notes.append(
            f"{answers.unshared} sampled job(s) (temperature > 0 or unset) shared no answer; "
            "set defaults.temperature = 0 or [dedup] sampled = true to share them"
        )
    return notes


async def dispatch_chunk(
    jobs: Iterable[Job | InvalidLine],
    config: Config,
    *,
    tierer: Tierer | None = None,
    ledger: Ledger | None = None,
    run_id: str | None = None,
    budget: Budget | None = None,
    backends: Mapping[str, Backend] | None = None,
    max_in_flight: int | None = None,
) -> AsyncIterator[Result]:
    """Tier and dispatch a chunk of jobs in the running event loop; yield each `Result` as it
    completes (completion order), one per item.

    For an engine that runs many dispatchers (one Ray actor, one event loop each): give each
    its own `ledger` file and `run_id` (merged afterwards with `tierline ledger merge`) and a
    `budget` share. `Result.to_dict()` is the result line; `Tally.add` sums them. Leaving the
    loop early (break, cancel) cancels the calls still in flight.
    """
    results: asyncio.Queue[Result | None] = asyncio.Queue()

    async def work() -> None:
        try:
            await run_jobs(
                jobs,
                config=config,
                sink=results.put_nowait,
                tierer=tierer,
                ledger=ledger,
                run_id=run_id,
                budget=budget,
                backends=backends,
                max_in_flight=max_in_flight,
            )
        finally:
            results.put_nowait(None)

    task = asyncio.create_task(work())
    try:
        while (result := await results.get()) is not None:
            yield result
        await task  # re-raises what the run raised
    finally:
        if not task.done():  # the caller left early: cancel the calls, close the backends
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
