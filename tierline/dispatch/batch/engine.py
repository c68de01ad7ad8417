"""Provider batches end to end: submit, wait or not, collect by custom_id, resubmit what never ran.

A provider batch (ledger table provider_batches, column status):

    submitting --create ok--> submitted --poll--> <provider's statuses> --ended--> collected
    submitting --create failed--> submit_failed (each of its jobs gets an error result)

A job (provider_batch_jobs.state):

    pending --collect--> ok | error | unfinished --resubmit--> resubmitted (+ a new pending row)

"unfinished" is an error result (`batch_expired`, `batch_cancelled`, or a batch that failed
validation because of other lines) that can still be resubmitted as it was. The pending state
lives in the ledger, never in memory, so a later process (cron in the morning) collects it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from ...config import Config
from ...errors import BackendError, ExitCode
from ...jobs import Result, RouteHop, Status, dumps
from ...ledger.accounting import Accountant, CallFacts
from ...ledger.batches import BatchRow, JobRow
from ...ledger.pricing import nanos_to_usd
from ...ledger.store import Ledger
from ..base import Completion
from ..retry import Attempted, call_with_retry
from .packing import Limits, Packer
from .providers import BatchProvider, BatchState, LineOutcome, make_provider

__all__ = [
    "MAX_BATCH_HOPS",
    "BatchEngine",
    "CollectReport",
    "Emit",
    "Pending",
    "PollPolicy",
    "Progress",
    "render_pending",
]

# A job goes into at most this many batches: the first and two resubmissions of what never ran.
MAX_BATCH_HOPS = 3
Emit = Callable[[Result], None]


@dataclass(frozen=True)
class PollPolicy:
    """How often to look at batches while waiting: a short first look (small batches end in
    minutes), then backing off to `max_s`, since a provider may take up to 24 h."""

    first_s: float = 10.0
    max_s: float = 300.0
    factor: float = 1.5
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * self.factor, self.max_s)


# What `collect` uses when given no policy; tests swap in a fast one.
DEFAULT_POLL = PollPolicy()


@dataclass(frozen=True, slots=True)
class Progress:
    """Where the batches being waited on stand (from the providers' request counts)."""

    batches: int
    ended: int
    requests: int
    done: int
    statuses: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Pending:
    """One job packed for a batch: its custom_id, the result line it has while it waits, and
    the provider request body."""

    custom_id: str
    job_id: str
    stub: Result
    body: dict[str, Any]


@dataclass
class CollectReport:
    """What a collection pass found, over the runs it looked at."""

    runs: list[str] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    pending: int = 0
    collected: int = 0  # batches collected by this pass
    resubmitted: int = 0  # jobs put into new batches by this pass
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if self.pending:
            return ExitCode.PENDING
        return ExitCode.JOBS_FAILED if self.failed else ExitCode.OK


def render_pending(stub: Result, batch_id: str | None) -> Result:
    """The pending line once its batch has a provider id."""
    route = list(stub.route)
    route[-1] = replace(route[-1], batch_id=batch_id)
    return replace(stub, route=route)


def _seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())


class BatchEngine:
    """Submits, polls and collects provider batches for one config and ledger.

    `limits` (by backend name) overrides the providers' batch limits: tests pack with small
    numbers. Keyed by the configured name, not the kind: every kind with a batch API (its
    `KINDS` entry) gets it, and two backends of one kind can differ.
    """

    def __init__(
        self, config: Config, ledger: Ledger, *, limits: Mapping[str, Limits] | None = None
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.store = ledger.batches
        self.limits = dict(limits or {})
        self._providers: dict[str, BatchProvider] = {}
        self._accountant: Accountant | None = None

    def provider(self, backend: str) -> BatchProvider:
        """The batch provider of a configured backend (raises BackendUnavailable without a key)."""
        if backend not in self._providers:
            config = self.config.backends.get(backend)
            if config is None:
                raise BackendError(
                    f"backend {backend!r} has provider batches in the ledger but is not in "
                    f"{self.config.origin}; collect with the config that submitted them"
                )
            self._providers[backend] = make_provider(backend, config, self.limits.get(backend))
        return self._providers[backend]

    async def aclose(self) -> None:
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()

    async def _call(self, backend: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        attempts = self.config.backends[backend].max_attempts
        try:
            result, _ = await call_with_retry(fn, max_attempts=attempts)
        except Attempted as exc:
            raise exc.error from None
        return result

    # --- submitting -------------------------------------------------------------------------

    async def submit(
        self, run_id: str, backend: str, items: list[Pending], size: int
    ) -> tuple[str | None, list[Result]]:
        """Record and submit one batch; return (provider batch id or None, each job's line).

        The ledger rows are written before the provider call, so a crash in between leaves a
        `submitting` batch to look at rather than a paid batch nobody knows about. When the
        provider refuses the batch after every retry, each job gets an error result.
        """
        provider = self.provider(backend)
        batch = self.store.add_batch(
            run_id,
            backend=backend,
            kind=provider.kind,
            model=str(getattr(provider, "model", "")),
            size=size,
            jobs=(
                (seq, p.custom_id, p.job_id, _json(p.stub.to_dict()), _json(p.body))
                for seq, p in enumerate(items, start=1)
            ),
        )
        requests = [(p.custom_id, p.body) for p in items]
        metadata = {"tierline_run": run_id, "tierline_batch": str(batch)}
        try:
            batch_id, file_id = await self._call(
                backend, lambda: provider.submit(requests, metadata)
            )
        except BackendError as exc:
            error = {"type": "batch_submit_failed", "message": str(exc)}
            finals = [self._final(p.stub, None, "error", 0, error, 0.0) for p in items]
            self.store.finish_jobs(
                (batch, seq, "error", r.to_dict()) for seq, r in enumerate(finals, start=1)
            )
            self.store.seen(batch, "submit_failed", {}, ended=True)
            self.store.collected(batch, error=str(exc))
            return None, finals
        self.store.submitted(batch, batch_id, file_id)
        return batch_id, [render_pending(p.stub, batch_id) for p in items]

    # --- collecting -------------------------------------------------------------------------

    async def refresh(self, batch: BatchRow) -> BatchState | None:
        """Ask the provider where a batch stands and note it; None when it cannot be asked."""
        if batch.batch_id is None:
            return None
        state: BatchState = await self._call(
            batch.backend, lambda: self.provider(batch.backend).retrieve(batch.batch_id or "")
        )
        self.store.seen(batch.id, state.status, state.counts, ended=state.ended)
        return state

    async def collect_batch(self, batch: BatchRow, state: BatchState, emit: Emit | None) -> None:
        """Join an ended batch's results to its jobs by custom_id and record each outcome."""
        provider = self.provider(batch.backend)
        rows = {row.custom_id: row for row in self.store.jobs(batch.id) if row.state == "pending"}
        by_seq = {row.seq: row for row in rows.values()}
        outcomes: dict[str, LineOutcome] = {}
        if state.line_errors:
            outcomes = _validation_outcomes(state, by_seq)
        else:
            async for outcome in provider.results(batch.batch_id or "", state):
                if outcome.custom_id in rows:  # a line for another custom_id is not ours
                    outcomes[outcome.custom_id] = outcome
        latency = _seconds(batch.submitted_at, _now_iso())
        finished = []
        for custom_id, row in rows.items():
            outcome = outcomes.get(custom_id) or LineOutcome(
                custom_id,
                "unfinished",
                error={
                    "type": "batch_no_result",
                    "message": f"batch {batch.batch_id} ({state.status}) reported no result "
                    "for this request",
                },
            )
            finished.append((row.seq, outcome.outcome, self._record(batch, row, outcome, latency)))
        # Write-ahead: the calls are committed before any result leaves and before the jobs are
        # marked final (a kill in between must not leave paid calls that are never collected).
        self.ledger.flush()
        for *_, result in finished:
            if emit is not None:
                emit(result)
        self.store.finish_jobs((batch.id, seq, state, r.to_dict()) for seq, state, r in finished)
        self.store.collected(batch.id)

    def _record(self, batch: BatchRow, row: JobRow, outcome: LineOutcome, latency: float) -> Result:
        """The job's final line; a ledger call row for every request the provider ran."""
        stub = Result.from_record(row.stub)
        completion = outcome.completion
        ran = outcome.outcome != "unfinished"
        price_nanos: int | None = 0
        if ran:
            call = CallFacts(
                backend=batch.backend,
                model=completion.model if completion else batch.model,
                status="ok" if completion else "error",
                attempts=1,
                latency_s=latency,
                usage=completion.usage if completion else None,
                batch=True,
                error=(outcome.error or {}).get("message"),
            )
            cost = self.accountant.record(
                row.job_id, stub.tier, [call], first_hop=len(stub.route), run_id=batch.run_id
            )
            price_nanos = cost.nanos
        return self._final(
            render_pending(stub, batch.batch_id),
            completion,
            "ok" if completion else "error",
            price_nanos,
            outcome.error,
            latency,
            ran=ran,
        )

    @property
    def accountant(self) -> Accountant:
        """Prices and records collected calls as a run's own calls are (made on first use)."""
        if self._accountant is None:
            self._accountant = Accountant(self.config, ledger=self.ledger)
        return self._accountant

    @staticmethod
    def _final(
        stub: Result,
        completion: Completion | None,
        status: Status,
        cost_nanos: int | None,
        error: Mapping[str, str] | None,
        latency: float,
        *,
        ran: bool = False,
    ) -> Result:
        """The pending line `stub` made final: its last hop and the line take the outcome."""
        hop = replace(
            stub.route[-1],
            status=status,
            attempts=int(ran),
            latency_s=latency,
            error=error["message"] if error else stub.route[-1].error,
        )
        route = [*stub.route[:-1], hop]
        result = replace(
            stub,
            status=status,
            cost_usd=nanos_to_usd(cost_nanos),
            latency_s=latency,
            attempts=sum(h.attempts for h in route),
            route=route,
            error=dict(error) if error else None,
        )
        if completion is not None:
            result.model = completion.model or stub.model
            result.output = completion.text
            result.finish_reason = completion.finish_reason
            result.usage = completion.usage
        return result

    # --- resubmitting -----------------------------------------------------------------------

    async def resubmit(self, run_id: str, emit: Emit | None) -> int:
        """Put the run's unfinished jobs into new batches (up to MAX_BATCH_HOPS batches each)."""
        count = 0
        for backend in sorted({b.backend for b in self.store.batches(run_id)}):
            rows = [
                r
                for r in self.store.unfinished(run_id, backend)
                if len((r.result or r.stub)["route"]) < MAX_BATCH_HOPS and r.request is not None
            ]
            if not rows:
                continue
            provider = self.provider(backend)
            packer: Packer[tuple[JobRow, Pending]] = Packer(provider.limits, provider.overhead)
            chunks = []
            for row in rows:
                stub = _restub(row, backend, str(getattr(provider, "model", "")))
                item = Pending(row.custom_id, row.job_id, stub, row.request or {})
                size = len(provider.line(row.custom_id, item.body))
                closed = packer.add((row, item), size)
                if closed is not None:
                    chunks.append(closed)
            last = packer.flush()
            chunks += [last] if last is not None else []
            for chunk in chunks:
                _, lines = await self.submit(
                    run_id, backend, [p for _, p in chunk.items], chunk.size
                )
                self.store.mark_resubmitted((r.batch, r.seq) for r, _ in chunk.items)
                count += len(lines)
                if emit is not None:
                    for line in lines:
                        emit(line)
        return count

    # --- the whole pass ---------------------------------------------------------------------

    async def collect(
        self,
        run_ids: list[str],
        *,
        wait: bool = False,
        resubmit: bool = False,
        poll: PollPolicy | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        emit: Emit | None = None,
    ) -> CollectReport:
        """Look at every open batch of the runs, collect those that ended, resubmit what never
        ran (with `resubmit`), and with `wait` keep polling until nothing is pending."""
        poll = poll or DEFAULT_POLL
        delays = poll.delays()
        report = CollectReport(runs=list(run_ids))
        while True:
            states: dict[str, int] = {}
            requests = done = ended = 0
            open_batches = [b for r in run_ids for b in self.store.batches(r, uncollected=True)]
            for batch in open_batches:
                state = await self.refresh(batch)
                status = state.status if state else batch.status
                states[status] = states.get(status, 0) + 1
                requests += batch.requests
                done += _done(state)
                if state is not None and state.ended:
                    ended += 1
                    await self.collect_batch(batch, state, emit)
                    report.collected += 1
            if resubmit:
                for run_id in run_ids:
                    report.resubmitted += await self.resubmit(run_id, emit)
            if on_progress is not None and open_batches:
                on_progress(Progress(len(open_batches), ended, requests, done, states))
            pending = sum(self.store.states(r).get("pending", 0) for r in run_ids)
            if not wait or pending == 0:
                break
            await poll.sleep(next(delays))
        self.ledger.flush()
        for run_id in run_ids:
            self._close_run(run_id, report)
        return report

    def report(self, run_id: str) -> CollectReport:
        """Where a run's jobs stand, from the ledger alone (nothing is asked or changed)."""
        report = CollectReport(runs=[run_id])
        self._count(run_id, report)
        return report

    def _count(self, run_id: str, report: CollectReport) -> tuple[int, int, int]:
        """Add the run's jobs (batch and synchronous) to the report; its batch (ok, failed,
        pending)."""
        states = self.store.states(run_id)
        ok = states.get("ok", 0)
        failed = states.get("error", 0) + states.get("unfinished", 0)
        pending = states.get("pending", 0)
        report.ok += ok
        report.failed += failed
        report.pending += pending
        submission = self.store.submission(run_id)
        if submission is not None:
            report.ok += submission.sync_ok
            report.failed += submission.sync_failed
        return ok, failed, pending

    def _close_run(self, run_id: str, report: CollectReport) -> None:
        """Fold the run's batch jobs into its ledger row and the report."""
        ok, failed, pending = self._count(run_id, report)
        submission = self.store.submission(run_id)
        if submission is None:
            return
        run = self.ledger.run(run_id)
        total_failed = submission.sync_failed + failed
        status = "pending" if pending else ("ok" if total_failed == 0 else "failed")
        self.ledger.finish_run(
            run_id,
            jobs=run.jobs if run else 0,
            ok=submission.sync_ok + ok,
            failed=total_failed,
            status=status,
        )
        # Open while something waits or can still be resubmitted; then done for good.
        retry = any(
            len((r.result or r.stub)["route"]) < MAX_BATCH_HOPS
            for backend in {b.backend for b in self.store.batches(run_id)}
            for r in self.store.unfinished(run_id, backend)
        )
        self.store.set_submission_state(run_id, "open" if pending or retry else "done")


def _done(state: BatchState | None) -> int:
    if state is None:
        return 0
    c = state.counts
    # OpenAI: completed + failed; Anthropic: everything but "processing".
    return (
        int(c.get("completed", 0))
        + int(c.get("failed", 0))
        + sum(int(c.get(k, 0)) for k in ("succeeded", "errored", "canceled", "expired"))
    )


def _validation_outcomes(state: BatchState, by_seq: Mapping[int, JobRow]) -> dict[str, LineOutcome]:
    """A batch that failed validation: the lines it names are errors; the others never ran.

    An error that names no line (the whole file refused, e.g. too large) fails every job: the
    same file would be refused again, so none of them is left to resubmit.
    """
    named = {line: message for line, message in state.line_errors if line is not None}
    whole = [message for line, message in state.line_errors if line is None]
    outcomes = {}
    for seq, row in by_seq.items():
        if seq in named or whole:
            message = f"batch validation failed: input line {seq}: {named.get(seq) or whole[0]}"
            outcomes[row.custom_id] = LineOutcome(
                row.custom_id, "error", error={"type": "batch_invalid", "message": message}
            )
        else:
            message = "batch_failed: the batch failed validation because of other lines"
            outcomes[row.custom_id] = LineOutcome(
                row.custom_id, "unfinished", error={"type": "batch_failed", "message": message}
            )
    return outcomes


def _restub(row: JobRow, backend: str, model: str) -> Result:
    """The pending line for a resubmission: the route so far plus a new pending hop."""
    previous = Result.from_record(row.result or row.stub)
    hop = RouteHop(backend, model, "pending", batch=True)
    return replace(previous, status="pending", error=None, route=[*previous.route, hop])


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _json(value: Any) -> str:
    return dumps(value).decode()
