"""The money side of a run, in one object the scheduler calls: price each hop of a job, write
it to the ledger, keep the budget, and say what it all cost against the baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config import Config
from ..dispatch.router import Hop
from ..jobs import Job, Result, Usage
from .budget import Budget, Hold, Refusal, worst_case_micros
from .pricing import CallPrice, Pricer, nanos_to_micros
from .store import CallRecord, Ledger

__all__ = ["Accountant", "JobCost", "skipped_result"]

API_ENDPOINTS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}


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

    async def admit(
        self, job: Job, chain: Sequence[str], max_tokens_for: Callable[[str], int]
    ) -> Hold | Refusal | None:
        """Reserve the job's worst case (None: no budget). A Refusal means: do not send it."""
        if self.budget is None:
            return None
        worst = worst_case_micros(self.pricer, job, chain, max_tokens_for)
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

    def _price(self, hop: Hop) -> CallPrice:
        completion = hop.completion
        extra = completion.extra if completion else {}
        batch = bool(extra.get("batch")) or extra.get("service_tier") == "batch"
        return self.pricer.price(
            hop.backend,
            hop.model,
            completion.usage if completion else None,
            batch=batch,
            busy_s=getattr(hop, "busy_s", 0.0),
        )

    def _endpoint(self, hop: Hop) -> str:
        extra = hop.completion.extra if hop.completion else {}
        if isinstance(extra.get("endpoint"), str):
            return str(extra["endpoint"])
        bc = self.config.backends[hop.backend]
        urls = getattr(bc, "base_urls", None) or [getattr(bc, "base_url", None)]
        return urls[0] or API_ENDPOINTS.get(bc.kind, "in-process")

    def record(self, job: Job, tier: int, hops: Sequence[Hop], *, first_hop: int = 1) -> JobCost:
        """Price every hop of a job and write each one that made a call to the ledger.

        `first_hop` numbers the hops on from earlier routes of the same job (escalation)."""
        total: int | None = 0
        baseline = 0
        for index, hop in enumerate(hops, start=first_hop):
            price = self._price(hop)
            if price.nanos is None:
                total = None
            elif total is not None:
                total += price.nanos
            baseline += price.baseline_nanos or 0
            if price.nanos is not None:
                self.cost_nanos += price.nanos
                self.baseline_nanos += price.baseline_nanos or 0
            if self.ledger is not None and self.run_id is not None and hop.attempts:
                self.ledger.record_call(self.run_id, self._call(job, tier, hop, index, price))
        return JobCost(total, baseline)

    async def durable(self) -> None:
        """Return once every call recorded so far is committed to the ledger."""
        if self.ledger is not None:
            await self.ledger.durable()

    def _call(self, job: Job, tier: int, hop: Hop, index: int, price: CallPrice) -> CallRecord:
        completion = hop.completion
        busy = getattr(hop, "busy_s", None)
        return CallRecord(
            job_id=job.id,
            tier=tier,
            backend=hop.backend,
            model=hop.model,
            status=hop.status,
            usage=completion.usage if completion else Usage(),
            cost_nanos=price.nanos,
            price_source=price.source,
            latency_s=hop.latency_s,
            attempt=hop.attempts,
            error=hop.error,
            endpoint=self._endpoint(hop),
            price_version=price.version,
            batch=price.batch,
            baseline_nanos=price.baseline_nanos,
            busy_s=busy if busy else None,
            hop=index,
            check_failed=hop.check.check if hop.check else None,
        )

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


def skipped_result(job: Job, tier: int, why: str, confidence: float, refusal: Refusal) -> Result:
    """The result of a job the budget did not let through: never sent, so it cost nothing."""
    return Result(
        id=job.id,
        line=job.line,
        source=job.source,
        status="skipped_budget",
        tier=tier,
        why=why,
        confidence=round(confidence, 3),
        cost_usd=0.0,
        error={"type": "budget", "message": refusal.reason},
        metadata=job.metadata,
    )
