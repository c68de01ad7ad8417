"""The run loop: stream jobs, tier them, dispatch with a bounded number in flight, and hand each
result to a sink as it completes. Memory is bounded by the in-flight window, not the input size."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import CacheConfig, Config
from ..errors import ExitCode
from ..interrupts import Stop
from ..jobs import InvalidLine, Job, Result, Status, Usage, read_jobs
from ..ledger.accounting import Accountant, JobCost, skipped_result
from ..ledger.budget import Budget, Refusal
from ..ledger.pricing import genai_prices_version, nanos_to_usd
from ..ledger.store import Ledger
from ..tiering.pipeline import Tierer
from ..tiering.vote import TierVote
from .answers import Answers
from .base import Backend, request_for
from .batch.divert import BatchDiverter, BatchOptions, open_diverter
from .checks import CheckFailure, run_checks
from .router import Hop, Outcome, Router

__all__ = ["RunSummary", "Tally", "run_files", "run_jobs"]

Sink = Callable[[Result], None]


class RecordWriter(Protocol):
    """Where result records go: `jobs.ResultWriter` or `resume.Journal`."""

    def write(self, record: Mapping[str, Any]) -> None: ...


DEFAULT_NOTE = "embedded default config (no tierline.toml): every tier runs on the local model"


@dataclass
class Tally:
    """Counts for the summary line, kept as results stream past."""

    jobs: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_tier: Counter[int] = field(default_factory=Counter)
    by_backend: Counter[str] = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    unpriced: int = 0
    fallbacks: int = 0
    escalated: Counter[int] = field(default_factory=Counter)  # by the tier first decided
    answers: Counter[str] = field(default_factory=Counter)  # checked answers by backend
    failed_checks: Counter[str] = field(default_factory=Counter)  # ... that failed a check
    deduped: int = 0  # copies of an identical job's answer (not sent)
    cached: int = 0  # answers from the answer cache (not sent)

    def add(self, result: Result) -> None:
        self.jobs += 1
        self.deduped += result.dedup_of is not None
        self.cached += result.cached
        self.by_status[result.status] += 1
        if result.tier is not None:
            self.by_tier[result.tier] += 1
        if result.backend:
            self.by_backend[result.backend] += 1
        self.usage = self.usage + result.usage
        if result.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost_usd += result.cost_usd
        # moved on: a backend that could not serve, followed by another (not the last hop)
        if any(hop.get("status") == "unavailable" for hop in result.route[:-1]):
            self.fallbacks += 1
        if result.escalations and result.tier is not None:
            self.escalated[result.tier] += 1
        for hop in result.route:
            if hop.get("status") == "ok":
                self.answers[hop["backend"]] += 1
                if "check" in hop:
                    self.failed_checks[hop["backend"]] += 1

    @property
    def failed(self) -> int:
        # a job waiting in a provider batch has not failed (yet)
        return self.jobs - self.by_status["ok"] - self.by_status["pending"]


@dataclass
class RunSummary:
    run_id: str | None
    config_origin: str
    tally: Tally
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if self.tally.by_status["skipped_budget"]:
            return ExitCode.BUDGET
        if self.tally.by_status["pending"]:
            return ExitCode.PENDING
        return ExitCode.OK if self.tally.failed == 0 else ExitCode.JOBS_FAILED


def _hop_error(outcome: Outcome) -> dict[str, str]:
    hop = outcome.final
    if hop is None:
        return {"type": "no_backend", "message": "no backend in the route"}
    kind = "backend_unavailable" if hop.status == "unavailable" else "backend_error"
    tried = " -> ".join(h.backend for h in outcome.hops)
    return {"type": kind, "message": f"{hop.error} (tried: {tried})"}


class _Dispatcher:
    def __init__(
        self,
        config: Config,
        router: Router,
        accountant: Accountant,
        divert: BatchDiverter | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.accountant = accountant  # prices, ledger rows and the budget (tierline.ledger)
        self.divert = divert  # provider batches (dispatch/batch): their results come later
        self.escalation = config.escalation  # answer checks and moving up a tier (None: off)

    async def __call__(self, job: Job, tierer: Tierer) -> Result | None:
        vote = tierer(job)
        if self.divert is not None:
            taken = await self._offer_to_batch(job, vote)
            if isinstance(taken, Refusal):
                return skipped_result(job, vote.tier, vote.why, vote.confidence, taken)
            if taken:
                return None
        tier, nanos = vote.tier, 0
        hops: list[Hop] = []
        nanos_known = True
        failure: CheckFailure | None = None
        escalations = 0
        while True:
            step = await self._dispatch(job, tier, first_hop=len(hops) + 1)
            if isinstance(step, Refusal):
                if not hops:  # nothing was sent: the budget skipped the job
                    return skipped_result(job, vote.tier, vote.why, vote.confidence, step)
                break  # the budget stops the escalation; the last answer stands, failed
            outcome, cost, failure = step
            hops.extend(outcome.hops)
            nanos_known = nanos_known and cost.nanos is not None
            nanos += cost.nanos or 0
            if failure is None or not outcome.ok:
                break
            next_tier = self._escalate_to(tier, escalations, outcome)
            if next_tier is None:
                break
            tier, escalations = next_tier, escalations + 1
        return self._result(
            job, vote, Outcome(hops), nanos if nanos_known else None, failure, escalations
        )

    async def send(self, job: Job, tierer: Tierer) -> Result | None:
        """The job's result, once its calls are durable in the ledger (write-ahead)."""
        # The first send of the run: the tasks created so far have not run, so no call is in
        # flight while the SDKs import (Router.warm).
        self.router.warm()
        result = await self(job, tierer)
        if result is not None:
            await self.accountant.durable()
        return result

    async def _offer_to_batch(self, job: Job, vote: TierVote) -> bool | Refusal:
        """Offer the job to a provider batch. Under --max-cost its worst case is reserved first
        and, once the job is in a batch, kept as spent: the batch is paid at collect time, maybe
        by another process, so this run must count it now to keep spend under the cap."""
        assert self.divert is not None
        chain = self.router.chain(vote.tier)[:1]
        hold = await self.accountant.admit(job, chain, self.router.max_tokens_for)
        if isinstance(hold, Refusal):
            return hold
        taken = await self.divert.offer(job, vote)
        # Taken: settle as unknown, which keeps the worst case; not taken: release the hold
        # (the synchronous path reserves its own).
        self.accountant.settle(hold, None if taken else JobCost(0, 0))
        return taken

    async def _dispatch(
        self, job: Job, tier: int, *, first_hop: int
    ) -> tuple[Outcome, JobCost, CheckFailure | None] | Refusal:
        """One pass along a tier's route: reserve, send, check the answer, record, settle."""
        defaults = self.config.defaults
        hold = await self.accountant.admit(job, self.router.chain(tier), self.router.max_tokens_for)
        if isinstance(hold, Refusal):
            return hold
        cost: JobCost | None = None
        try:
            outcome = await self.router.dispatch(
                tier,
                lambda max_tokens: request_for(
                    job, max_tokens=max_tokens, temperature=defaults.temperature
                ),
            )
            for hop in outcome.hops:
                hop.tier = tier
            failure = self._check(job, tier, outcome)
            calls = [self.router.call_facts(hop) for hop in outcome.hops]
            cost = self.accountant.record(job.id, tier, calls, first_hop=first_hop)
        finally:
            self.accountant.settle(hold, cost)
        return outcome, cost, failure

    def _check(self, job: Job, tier: int, outcome: Outcome) -> CheckFailure | None:
        """Run the answer checks (only when escalation is configured) on a successful answer."""
        final = outcome.final
        if self.escalation is None or not outcome.ok or final is None or final.completion is None:
            return None
        names = job.checks if job.checks is not None else self.escalation.checks_for(tier)
        final.check = run_checks(job, final.completion, names)
        return final.check

    def _escalate_to(self, tier: int, escalations: int, outcome: Outcome) -> int | None:
        """The next tier up whose route starts elsewhere; None when there is none (or no hops
        left). Sending the same prompt to the same backend again would only pay twice."""
        assert self.escalation is not None
        if escalations >= self.escalation.max_hops:
            return None
        answered_by = outcome.final.backend if outcome.final else None
        for higher in range(tier + 1, 4):
            if self.router.chain(higher)[0] != answered_by:
                return higher
        return None

    def _result(
        self,
        job: Job,
        vote: TierVote,
        outcome: Outcome,
        nanos: int | None,
        failure: CheckFailure | None,
        escalations: int,
    ) -> Result:
        route = [h.as_dict() for h in outcome.hops]
        if self.config.is_default and route:
            route[-1]["note"] = DEFAULT_NOTE
        final = outcome.final
        completion = final.completion if final else None
        status: Status
        error: dict[str, str] | None
        if not outcome.ok:
            status, error = "error", _hop_error(outcome)
        elif failure is not None:
            # The answer is kept in `output`, but it is not what the job asked for.
            status = "error"
            error = {
                "type": "check_failed",
                "message": f"answer check {failure.check!r} failed: {failure.detail}"
                + (f" (after {escalations} escalation(s))" if escalations else ""),
            }
        else:
            status, error = "ok", None
        return Result(
            id=job.id,
            line=job.line,
            source=job.source,
            status=status,
            tier=vote.tier,
            why=vote.why,
            confidence=round(vote.confidence, 3),
            backend=final.backend if final else None,
            model=final.model if final else None,
            output=completion.text if completion else None,
            finish_reason=completion.finish_reason if completion else None,
            usage=completion.usage if completion else Usage(),
            cost_usd=nanos_to_usd(nanos),
            latency_s=sum(h.latency_s for h in outcome.hops),
            attempts=outcome.attempts,
            route=route,
            error=error,
            metadata=job.metadata,
            escalations=escalations,
        )


async def run_jobs(
    items: Iterable[Job | InvalidLine],
    *,
    config: Config,
    tierer: Tierer,
    sink: Sink,
    ledger: Ledger | None = None,
    run_id: str | None = None,
    max_in_flight: int | None = None,
    read_in_thread: bool = False,
    backends: Mapping[str, Backend] | None = None,
    stop: Stop | None = None,
    budget: Budget | None = None,
    divert: BatchDiverter | None = None,
    answers: Answers | None = None,
) -> RunSummary:
    """Dispatch every job; call `sink` once per input item, in completion order.

    With `answers`, a job that can reuse an answer (an identical job's in this run, or the
    answer cache's) is not sent (dispatch/answers.py).

    With `divert`, jobs bound for provider batches are packed and submitted by it; it emits
    their (pending or final) results through the same sink.

    With `stop`, a stop request (SIGINT/SIGTERM) ends reading, and in-flight jobs get its grace
    period before being cancelled; a cancelled job emits nothing (a resume redoes it).
    """
    started = time.perf_counter()
    router = Router(config, backends)  # warmed before the first send (_Dispatcher.send)
    accountant = Accountant(config, ledger=ledger, run_id=run_id, budget=budget)
    dispatcher = _Dispatcher(config, router, accountant, divert)
    reuse = Answers.or_off(answers, config)
    tally = Tally()
    window = max_in_flight or min(
        1024, sum(b.max_concurrency for b in config.backends.values()) * 2
    )
    slots = asyncio.Semaphore(window)
    pending: set[asyncio.Task[None]] = set()

    def emit(result: Result) -> None:
        tally.add(result)
        sink(result)

    if divert is not None:
        divert.bind(emit)

    send = functools.partial(dispatcher.send, tierer=tierer)

    async def one(job: Job, key: str | None) -> None:
        try:
            result = await reuse.answer(job, key, send)
            if result is not None:
                emit(result)
        finally:
            slots.release()

    iterator = iter(items)
    sentinel = object()
    try:
        while True:
            # A pipe on stdin may block: read it on a thread so in-flight calls keep moving.
            item = (
                await asyncio.to_thread(next, iterator, sentinel)
                if read_in_thread
                else next(iterator, sentinel)
            )
            if item is sentinel or (stop is not None and stop.requested):
                break
            assert isinstance(item, Job | InvalidLine)
            # an invalid line, a cache hit, a copy of a finished answer: no slot, no task
            key, known = reuse.lookup(item)
            if known is not None:
                emit(known)
                continue
            assert isinstance(item, Job)
            if stop is None:
                await slots.acquire()
            elif not await stop.acquire(slots):
                break
            task = asyncio.create_task(one(item, key))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending and stop is not None:
            await stop.drain(pending)
        elif pending:
            await asyncio.gather(*pending)
        if divert is not None and not (stop is not None and stop.requested):
            await divert.finish()  # an interrupted run leaves unsent jobs to the resume
    finally:
        for task in pending:
            task.cancel()
        await router.aclose()
        if divert is not None:
            await divert.aclose()
    notes = ([DEFAULT_NOTE] if config.is_default else []) + accountant.notes()
    notes += _reuse_notes(tally, answers)
    return RunSummary(run_id, config.origin, tally, time.perf_counter() - started, notes)


def _answers(config: Config, cache_path: str | None, *, batches: bool) -> Answers | None:
    """Dedup (not with provider batches: an answer there comes hours later, from another
    process) and the answer cache, when `[cache]` or --cache turns it on."""
    from .answers import AnswerCache

    cache = None
    if cache_path is not None or config.cache is not None:
        cache = AnswerCache.from_config(config.cache or CacheConfig(), cache_path)
    answers = Answers(config, cache, dedup=not batches)
    return answers if answers.active else None


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


async def run_files(
    inputs: list[str],
    *,
    config: Config,
    writer: RecordWriter,
    ledger_path: Path,
    command: str = "run",
    on_result: Sink | None = None,
    select: Callable[[Iterable[Job | InvalidLine]], Iterable[Job | InvalidLine]] | None = None,
    stop: Stop | None = None,
    max_cost_micros: int | None = None,
    batches: BatchOptions | None = None,
    cache_path: str | None = None,
) -> RunSummary:
    """A whole run: read the inputs, dispatch, write results, and keep the ledger.

    `select` filters the input stream (shards, jobs already done on resume); `stop` makes the
    run stoppable by signals (see `run_jobs`).
    """
    with Ledger(ledger_path) as ledger:
        run_id = ledger.start_run(
            command=command,
            config_origin=config.origin,
            inputs=inputs,
            baseline_model=config.baseline.model,
            max_cost_micros=max_cost_micros,
            price_version=genai_prices_version(),
        )

        if hasattr(writer, "before_sync"):  # resume.Journal: the ledger syncs before it does
            setattr(writer, "before_sync", ledger.sync)  # noqa: B010 - not in RecordWriter

        def sink(result: Result) -> None:
            writer.write(result.to_dict())
            if on_result is not None:
                on_result(result)

        divert = open_diverter(batches, config=config, ledger=ledger, run_id=run_id, inputs=inputs)
        items: Iterable[Job | InvalidLine] = read_jobs(inputs)
        answers = _answers(config, cache_path, batches=divert is not None)
        try:
            summary = await run_jobs(
                select(items) if select is not None else items,
                config=config,
                tierer=Tierer.from_config(config.tiering),
                sink=sink,
                ledger=ledger,
                run_id=run_id,
                read_in_thread="-" in inputs,
                stop=stop,
                budget=None if max_cost_micros is None else Budget(max_cost_micros),
                divert=divert,
                answers=answers,
            )
        finally:
            if answers is not None and answers.cache is not None:
                answers.cache.close()
        t = summary.tally
        if divert is not None:
            divert.close(t.by_status["ok"], t.failed)
            summary.notes += divert.notes
        status = "pending" if t.by_status["pending"] else ("ok" if t.failed == 0 else "failed")
        if stop is not None and stop.requested:
            status = "interrupted"
        ledger.finish_run(
            run_id,
            jobs=t.jobs,
            ok=t.by_status["ok"],
            failed=t.failed,
            status=status,
            skipped_budget=t.by_status["skipped_budget"],
            deduped=t.deduped,
            cached=t.cached,
        )
        if hasattr(writer, "before_sync"):
            setattr(writer, "before_sync", None)  # noqa: B010 - closing the ledger syncs it
    return summary
