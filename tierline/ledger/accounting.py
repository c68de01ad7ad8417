"""The money side of a run, in one object the scheduler calls: price each call of a job, write
it to the ledger, keep the budget, and say what it all cost against the baseline.

The ledger sits below dispatch (docs/architecture.md): it takes `CallFacts`, neutral records of
what each call did, which the dispatch side builds from its own types; nothing here knows a
hop, a completion or a backend kind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Config
from ..jobs import Job, Usage
from .budget import Budget, Hold, Refusal, worst_case_micros
from .pricing import CallPrice, Pricer, nanos_to_micros
from .store import CallRecord, Ledger

__all__ = ["Accountant", "CallFacts", "JobCost"]


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What one backend did for a job, as the ledger prices and stores it."""

    backend: str  # the configured backend's name (the pricing key)
    model: str
    status: str  # "ok", "error", "unavailable"
    attempts: int  # requests sent, retries included; 0 = nothing was sent, nothing is written
    latency_s: float
    usage: Usage | None = None  # None: no answer came back
    batch: bool = False  # through a provider batch API: batch prices
    busy_s: float = 0.0  # this call's share of a self-hosted backend's busy time (gpu_hour_usd)
    endpoint: str | None = None  # where it was sent (a base URL, "in-process")
    error: str | None = None
    check_failed: str | None = None  # the answer check its answer failed (escalation)


@dataclass(frozen=True, slots=True)
class JobCost:
    nanos: int | None  # None when any hop's price is unknown
    baseline_nanos: int


class Accountant:
    """Prices, records and budgets the calls of one run."""

    def __init__(
        self,
        config: Config,
        *,
        ledger: Ledger | None = None,
        run_id: str | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.config = config
        self.pricer = Pricer(config)
        self.pricer.baseline  # noqa: B018 - fail on an unpriceable baseline before any call
        self.ledger = ledger
        self.run_id = run_id
        self.budget = budget
        self.cost_nanos = 0
        self.baseline_nanos = 0  # over the calls whose own cost is known: like for like

    async def admit(self, job: Job, chain: Sequence[str]) -> Hold | Refusal | None:
        """Reserve the job's worst case (None: no budget). A Refusal means: do not send it."""
        if self.budget is None:
            return None
        worst = worst_case_micros(self.config, self.pricer, job, chain)
        if isinstance(worst, Refusal):
            self.budget.refused += 1
            return worst
        hold = await self.budget.reserve(worst)
        if hold is None:
            return Refusal(
                f"--max-cost ${self.budget.cap_micros / 1e6:,.6f}: spent "
                f"${self.budget.spent_micros / 1e6:,.6f}, and this job may cost up to "
                f"${worst / 1e6:,.6f}; not sent"
            )
        return hold

    def settle(self, hold: Hold | Refusal | None, cost: JobCost | None) -> None:
        """Settle a hold with what the job cost (None: it was interrupted; assume the worst)."""
        if self.budget is not None and isinstance(hold, Hold):
            spent = None if cost is None or cost.nanos is None else nanos_to_micros(cost.nanos)
            self.budget.settle(hold, spent)

    def record(
        self,
        job_id: str,
        tier: int | None,
        calls: Sequence[CallFacts],
        *,
        first_hop: int = 1,
        run_id: str | None = None,
    ) -> JobCost:
        """Price every call of a job and write each one that sent something to the ledger.

        `first_hop` numbers the calls on from earlier routes of the same job (escalation, a
        resubmitted batch); `run_id` defaults to this run's (batch collection records for the
        run that submitted each batch)."""
        run_id = run_id or self.run_id
        total: int | None = 0
        baseline = 0
        for index, call in enumerate(calls, start=first_hop):
            price = self.pricer.price(
                call.backend, call.model, call.usage, batch=call.batch, busy_s=call.busy_s
            )
            if price.nanos is None:
                total = None
            elif total is not None:
                total += price.nanos
            baseline += price.baseline_nanos or 0
            if price.nanos is not None:
                self.cost_nanos += price.nanos
                self.baseline_nanos += price.baseline_nanos or 0
            if self.ledger is not None and run_id is not None and call.attempts:
                self.ledger.record_call(run_id, _row(job_id, tier, call, index, price))
        return JobCost(total, baseline)

    async def durable(self) -> None:
        """Return once every call recorded so far is committed to the ledger."""
        if self.ledger is not None:
            await self.ledger.durable()

    def notes(self) -> list[str]:
        """Lines for the run summary: unknown prices (loudly) and the savings."""
        lines = self.pricer.unknown_warnings()
        b = self.config.baseline.model
        if self.baseline_nanos:
            saved = self.baseline_nanos - self.cost_nanos
            lines.append(
                f"savings: ${saved / 1e9:,.6f} ({saved / self.baseline_nanos:.1%}) vs "
                f"${self.baseline_nanos / 1e9:,.6f} for the same tokens on {b}"
            )
        return lines


def _row(job_id: str, tier: int | None, call: CallFacts, hop: int, price: CallPrice) -> CallRecord:
    return CallRecord(
        job_id=job_id,
        tier=tier,
        backend=call.backend,
        model=call.model,
        status=call.status,
        usage=call.usage or Usage(),
        cost_nanos=price.nanos,
        price_source=price.source,
        latency_s=call.latency_s,
        attempt=call.attempts,
        error=call.error,
        endpoint=call.endpoint,
        price_version=price.version,
        batch=price.batch,
        baseline_nanos=price.baseline_nanos,
        busy_s=call.busy_s or None,
        hop=hop,
        check_failed=call.check_failed,
    )
