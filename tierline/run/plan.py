"""`tierline plan`: what a job file would cost, before anything is sent.

Each job is tiered exactly as `run` would and goes to the first backend of its tier's route.
Its tokens are estimated (`tierline.ledger.estimate`: a word-piece count for the prompt, a
task-dependent share of max_tokens for the answer) and priced like a real call, synchronously
and through the provider batch APIs; the baseline model prices the same tokens. A backend priced
by `gpu_hour_usd` is priced through its throughput (`tierline.ledger.throughput`: learned from the
ledger's past calls, or a config hint): estimated tokens -> busy seconds -> dollars. Every row
says which basis its figure uses. The worst case (the bound `run --max-cost` reserves) is summed
too. docs/costs.md has the measured error.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..config import Config
from ..dispatch.limits import BURST_S
from ..jobs import InvalidLine, Job, Usage
from ..ledger.budget import Refusal, worst_case_micros
from ..ledger.estimate import estimate_input_tokens, estimate_output_tokens
from ..ledger.pricing import SECONDS_PER_HOUR, GpuHourTariff, Pricer, Tariff, to_micros
from ..ledger.throughput import Throughput, from_hint, learn
from ..tiering.pipeline import Tierer

__all__ = ["TOKEN_ESTIMATE_NOTE", "Plan", "PlanRow", "make_plan"]

TOKEN_ESTIMATE_NOTE = "estimated tokens (docs/costs.md: totals within ~5% on the examples)"


@dataclass(slots=True)
class PlanRow:
    """One tier on one backend (the first of the tier's route)."""

    tier: int
    backend: str
    model: str
    jobs: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    max_output_tokens: int = 0
    cost: Decimal | None = Decimal(0)  # None: unknown price
    batch_cost: Decimal | None = Decimal(0)
    baseline: Decimal = Decimal(0)
    baseline_batch: Decimal = Decimal(0)  # the baseline through its provider's batch API
    worst_micros: int | None = 0
    batch_api: bool = False
    basis: str = ""  # where the cost figure comes from
    gpu_hour_usd: Decimal | None = None  # priced by busy time: the hourly price ...
    throughput: Throughput | None = None  # ... and the throughput that turns tokens into time
    busy_s: float | None = None  # predicted busy seconds: the wall time this row keeps its
    # backend busy at the measured concurrency (None: nothing measured)
    rel_error: float | None = None  # standard error of the cost as a share of it, when known
    limit_s: float = 0.0  # the least time the backend's rpm/tpm limits allow for these jobs
    time_basis: str = ""  # where busy_s comes from, or why it is unknown

    def add(
        self,
        *,
        usage: Usage,
        max_tokens: int,
        tariff: Tariff | None,
        pricer: Pricer,
        worst: int | None,
    ) -> None:
        self.jobs += 1
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.max_output_tokens += max_tokens
        # by tokens now; a busy-time price waits for all the jobs (price_busy_time)
        if (
            tariff is not None
            and not isinstance(tariff, GpuHourTariff)
            and self.cost is not None
            and self.batch_cost is not None
        ):
            self.cost += tariff.cost(usage, batch=False, busy_s=0.0)
            self.batch_cost += tariff.cost(usage, batch=self.batch_api, busy_s=0.0)
        self.baseline += pricer.baseline.cost(usage, batch=False, busy_s=0.0)
        self.baseline_batch += pricer.baseline.cost(usage, batch=True, busy_s=0.0)
        self.worst_micros = (
            None if worst is None or self.worst_micros is None else self.worst_micros + worst
        )

    def price_busy_time(self, rpm: int | None, tpm: int | None) -> None:
        """Busy seconds from the throughput and, for a gpu_hour_usd row, dollars (once all jobs
        are in: the busy-time model is linear in calls and tokens)."""
        tokens = self.input_tokens + self.output_tokens
        self.limit_s = max(_limit_floor(self.jobs, rpm), _limit_floor(tokens, tpm))
        if self.throughput is None:
            return
        self.busy_s = self.throughput.busy_seconds(self.jobs, self.output_tokens)
        if self.gpu_hour_usd is None:
            return
        self.cost = self.batch_cost = (
            self.gpu_hour_usd * Decimal(repr(self.busy_s)) / SECONDS_PER_HOUR
        )
        self.rel_error = self.throughput.relative_error(self.jobs, self.output_tokens)

    def as_dict(self) -> dict[str, Any]:
        cost = None if self.cost is None else to_micros(self.cost)
        error = None if cost is None or self.rel_error is None else round(cost * self.rel_error)
        return {
            "tier": self.tier,
            "backend": self.backend,
            "model": self.model,
            "jobs": self.jobs,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "max_output_tokens": self.max_output_tokens,
            "cost_micros": cost,
            "cost_error_micros": error,
            "batch_cost_micros": None if self.batch_cost is None else to_micros(self.batch_cost),
            "baseline_micros": to_micros(self.baseline),
            "baseline_batch_micros": to_micros(self.baseline_batch),
            "savings_micros": None if cost is None else to_micros(self.baseline) - cost,
            "worst_case_micros": self.worst_micros,
            "batch_api": self.batch_api,
            "basis": self.basis,
            "busy_s": self.busy_s,
            "limit_s": self.limit_s,
            "time_basis": self.time_basis,
            "gpu_hour_usd": None if self.gpu_hour_usd is None else float(self.gpu_hour_usd),
            "throughput": None if self.throughput is None else self.throughput.as_dict(),
        }


def _limit_floor(amount: float, per_minute: int | None) -> float:
    """The least time a rate limit lets `amount` through: the limiter's bucket starts full
    (BURST_S seconds' worth), the rest comes at the limit's rate."""
    if not per_minute:
        return 0.0
    rate = per_minute / 60.0
    return max(0.0, amount - max(1.0, rate * BURST_S)) / rate


@dataclass(slots=True)
class Plan:
    rows: list[PlanRow] = field(default_factory=list)
    invalid: int = 0  # lines that are not jobs: they cost nothing and get an error result
    baseline_model: str = ""
    max_cost_micros: int | None = None

    def _sum(self, key: str) -> int | None:
        values = [row.as_dict()[key] for row in self.rows]
        return None if any(v is None for v in values) else sum(values)

    @property
    def cost_micros(self) -> int | None:
        return self._sum("cost_micros")

    @property
    def unpriced(self) -> list[PlanRow]:
        return [row for row in self.rows if row.cost is None]

    @property
    def over_budget(self) -> bool:
        """Whether `run --max-cost` would stop: the estimate passes the cap, or can't be made."""
        if self.max_cost_micros is None:
            return False
        cost = self.cost_micros
        return cost is None or cost > self.max_cost_micros

    @property
    def cost_error_micros(self) -> int | None:
        """Standard error of the total from the busy-time fits (independent rows add in
        quadrature); None when no row has a measured error."""
        errors = [row.as_dict()["cost_error_micros"] for row in self.rows]
        known = [e for e in errors if e is not None]
        return round(math.sqrt(sum(e * e for e in known))) if known else None

    def duration(self) -> dict[str, Any]:
        """When the run would finish: backends work in parallel, so the longest backend's busy
        time (its rows' predicted busy seconds, or its rate limits' floor if longer)."""
        busy: dict[str, float | None] = {}
        floor: dict[str, float] = {}
        for row in self.rows:
            before = busy.get(row.backend, 0.0)
            busy[row.backend] = (
                None if before is None or row.busy_s is None else before + row.busy_s
            )
            floor[row.backend] = floor.get(row.backend, 0.0) + row.limit_s
        per = {name: max(b or 0.0, floor[name]) for name, b in busy.items()}
        unknown = sorted(name for name, b in busy.items() if b is None)
        longest = max(per, key=lambda name: per[name]) if per else None
        return {
            "seconds": None if unknown or longest is None else per[longest],
            "at_least_s": per[longest] if longest is not None else 0.0,
            "longest_backend": longest,
            "per_backend_s": per,
            "unknown_backends": unknown,
        }

    def as_dict(self) -> dict[str, Any]:
        totals: dict[str, Any] = {
            key: self._sum(key)
            for key in (
                "jobs",
                "input_tokens",
                "output_tokens",
                "max_output_tokens",
                "cost_micros",
                "batch_cost_micros",
                "baseline_micros",
                "baseline_batch_micros",
                "savings_micros",
                "worst_case_micros",
            )
        }
        totals["cost_error_micros"] = self.cost_error_micros
        busy = [row.busy_s for row in self.rows if row.gpu_hour_usd is not None]
        totals["busy_s"] = None if any(b is None for b in busy) else sum(b or 0.0 for b in busy)
        return {
            "rows": [row.as_dict() for row in self.rows],
            "totals": totals,
            "invalid_lines": self.invalid,
            "duration": self.duration(),
            "baseline_model": self.baseline_model,
            "max_cost_micros": self.max_cost_micros,
            "over_budget": self.over_budget,
        }


def make_plan(
    items: Iterable[Job | InvalidLine],
    *,
    config: Config,
    tierer: Tierer,
    max_cost_micros: int | None = None,
    ledger: sqlite3.Connection | None = None,
) -> Plan:
    """Estimate every job's tokens and cost on the first backend of its tier's route.

    `ledger` (read only) is where the busy-time throughput of gpu_hour_usd backends is learned.
    """
    pricer = Pricer(config)
    rows: dict[tuple[int, str], PlanRow] = {}
    plan = Plan(baseline_model=config.baseline.model, max_cost_micros=max_cost_micros)
    for item in items:
        if isinstance(item, InvalidLine):
            plan.invalid += 1
            continue
        tier = tierer(item).tier
        chain = config.route(tier)
        backend = chain[0]
        bc = config.backends[backend]
        row = rows.get((tier, backend))
        if row is None:
            row = rows[(tier, backend)] = _new_row(tier, backend, config, pricer, ledger)
        max_tokens = config.max_tokens_for(backend, item)
        usage = Usage(
            input_tokens=estimate_input_tokens(item, in_process=bc.entry.in_process),
            output_tokens=estimate_output_tokens(item, max_tokens),
        )
        worst = worst_case_micros(config, pricer, item, chain)
        row.add(
            usage=usage,
            max_tokens=max_tokens,
            tariff=pricer.tariff(backend),
            pricer=pricer,
            worst=None if isinstance(worst, Refusal) else worst,
        )
    for row in rows.values():
        bc = config.backends[row.backend]
        row.price_busy_time(bc.rpm, bc.tpm)
    plan.rows = sorted(rows.values(), key=lambda r: (r.tier, r.backend))
    return plan


def _new_row(
    tier: int, backend: str, config: Config, pricer: Pricer, ledger: sqlite3.Connection | None
) -> PlanRow:
    bc = config.backends[backend]
    model = bc.display_model
    row = PlanRow(tier, backend, model, batch_api=bc.entry.batch is not None)
    tariff = pricer.tariff(backend)
    if tariff is None:
        row.cost = row.batch_cost = None
        row.basis = (
            f"unknown: no price for {model!r}; set backends.{backend}.price or gpu_hour_usd, "
            f'or [pricing.models."{model}"]'
        )
    elif isinstance(tariff, GpuHourTariff):
        row.gpu_hour_usd = tariff.usd_per_hour
    else:
        row.basis = f"{tariff.source}; {TOKEN_ESTIMATE_NOTE}"
    found = throughput_of(backend, model, config, ledger)
    if isinstance(found, Throughput):
        row.throughput = found
        row.time_basis = found.describe()
    else:
        row.time_basis = f"unknown: {found}"
    if row.gpu_hour_usd is not None:
        if isinstance(found, str):
            row.cost = row.batch_cost = None
            row.basis = (
                f"unknown: ${row.gpu_hour_usd}/GPU-hour but no throughput: {found}: run some "
                f"jobs on it, `plan --calibrate N`, or set backends.{backend}.throughput"
            )
        else:
            row.basis = f"${row.gpu_hour_usd}/GPU-hour x busy time; {found.describe()}"
    return row


def throughput_of(
    backend: str, model: str, config: Config, ledger: sqlite3.Connection | None
) -> Throughput | str:
    """Measured throughput (the ledger) first, then the config's hint; else why neither."""
    learned = learn(ledger, backend, model) if ledger is not None else "there is no ledger yet"
    if isinstance(learned, Throughput):
        return learned
    hint = getattr(config.backends[backend], "throughput", None)
    if hint is not None:
        return from_hint(hint)
    return learned
