"""One job, once tiered: offer it to a provider batch, or send it along its tier's route,
check the answer and move it up a tier when a check fails (escalation), pricing every pass."""

from __future__ import annotations

from ..config import Config
from ..dispatch.base import request_for
from ..dispatch.batch.divert import BatchDiverter
from ..dispatch.checks import CheckFailure, run_checks
from ..dispatch.router import Hop, Outcome, Router
from ..jobs import Job, Result, Usage
from ..ledger.accounting import Accountant, JobCost
from ..ledger.budget import Refusal
from ..ledger.pricing import nanos_to_usd
from ..tiering.vote import TierVote
from .tally import DEFAULT_NOTE

__all__ = ["Dispatcher"]


def _hop_error(outcome: Outcome) -> dict[str, str]:
    hop = outcome.final
    if hop is None:
        return {"type": "no_backend", "message": "no backend in the route"}
    kind = "backend_unavailable" if hop.status == "unavailable" else "backend_error"
    tried = " -> ".join(h.backend for h in outcome.hops)
    return {"type": kind, "message": f"{hop.error} (tried: {tried})"}


class Dispatcher:
    """Sends tiered jobs; the router, the accountant and the batch diverter are the run's."""

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

    async def __call__(self, job: Job, vote: TierVote) -> Result | None:
        if self.divert is not None:
            taken = await self._offer_to_batch(job, vote)
            if isinstance(taken, Refusal):
                return Result.skipped(job, vote, taken.reason)
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
                    return Result.skipped(job, vote, step.reason)
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

    async def send(self, job: Job, vote: TierVote) -> Result | None:
        """The job's result, once its calls are durable in the ledger (write-ahead)."""
        # The first send of the run: the tasks created so far have not run, so no call is in
        # flight while the SDKs import (Router.warm).
        self.router.warm()
        result = await self(job, vote)
        if result is not None:
            await self.accountant.durable()
        return result

    async def _offer_to_batch(self, job: Job, vote: TierVote) -> bool | Refusal:
        """Offer the job to a provider batch. Under --max-cost its worst case is reserved first
        and, once the job is in a batch, kept as spent: the batch is paid at collect time, maybe
        by another process, so this run must count it now to keep spend under the cap."""
        assert self.divert is not None
        chain = self.router.chain(vote.tier)[:1]
        hold = await self.accountant.admit(job, chain)
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
        hold = await self.accountant.admit(job, self.router.chain(tier))
        if isinstance(hold, Refusal):
            return hold
        cost: JobCost | None = None
        try:
            outcome = await self.router.dispatch(
                tier, lambda backend: request_for(job, self.config, backend)
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
        route = [h.to_route() for h in outcome.hops]
        if self.config.is_default and route:
            route[-1].note = DEFAULT_NOTE
        final = outcome.final
        completion = final.completion if final else None
        error: dict[str, str] | None = None
        if not outcome.ok:
            error = _hop_error(outcome)
        elif failure is not None:
            # The answer is kept in `output`, but it is not what the job asked for.
            error = {
                "type": "check_failed",
                "message": f"answer check {failure.check!r} failed: {failure.detail}"
                + (f" (after {escalations} escalation(s))" if escalations else ""),
            }
        return Result.answered(
            job,
            vote,
            error=error,
            route=route,
            backend=final.backend if final else None,
            model=final.model if final else None,
            output=completion.text if completion else None,
            finish_reason=completion.finish_reason if completion else None,
            usage=completion.usage if completion else Usage(),
            cost_usd=nanos_to_usd(nanos),
            latency_s=sum(h.latency_s for h in outcome.hops),
            attempts=outcome.attempts,
            escalations=escalations,
        )
