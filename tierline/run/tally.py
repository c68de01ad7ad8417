"""What a run counts as results stream past, and what it hands back: `Tally` and `RunSummary`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import ExitCode
from ..jobs import Result, Usage

__all__ = ["DEFAULT_NOTE", "RunSummary", "Tally"]

_DISTINCT_ERRORS = 100
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
    # why jobs failed, by message: the summary names the most common one, so that a missing
    # API key or a dead server is said once on stderr, not only in every failed result line
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, result: Result) -> None:
        self.jobs += 1
        self.deduped += result.dedup_of is not None
        self.cached += result.cached
        self.by_status[result.status] += 1
        if result.error and result.status not in ("ok", "pending"):
            self._count_error(result.error.get("message") or result.error.get("type", ""))
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
        if any(hop.status == "unavailable" for hop in result.route[:-1]):
            self.fallbacks += 1
        if result.escalations and result.tier is not None:
            self.escalated[result.tier] += 1
        for hop in result.route:
            if hop.status == "ok":
                self.answers[hop.backend] += 1
                if hop.check is not None:
                    self.failed_checks[hop.backend] += 1

    def _count_error(self, message: str) -> None:
        # bounded: invalid lines each name their own file:line, and a million of them must not
        # become a million keys; the common causes are among the first distinct ones seen
        if message in self.errors or len(self.errors) < _DISTINCT_ERRORS:
            self.errors[message] += 1

    def top_error(self) -> str | None:
        """The most common failure, as "N job(s): message" (the first seen on a tie)."""
        if not self.errors:
            return None
        message, n = self.errors.most_common(1)[0]
        return f"{n} job(s): {message}"

    @property
    def failed(self) -> int:
        # a job waiting in a provider batch has not failed (yet)
        return self.jobs - self.by_status["ok"] - self.by_status["pending"]


@dataclass
class RunSummary:
    """What a run did: its ledger id, the tally, how long it took and lines for the summary."""

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
