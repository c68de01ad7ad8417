"""`tierline plan`: what a job file would cost, before anything is sent.

Each job is tiered exactly as `run` would and goes to the first backend of its tier's route.
Its tokens are estimated (`tierline.ledger.estimate`: a word-piece count for the prompt, a
task-dependent share of max_tokens for the answer) and priced like a real call, synchronously
and through the provider batch APIs; the baseline model prices the same tokens. The worst case
(the bound `run --max-cost` reserves) is summed too. docs/costs.md has the measured error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..config import Config
from ..jobs import InvalidLine, Job, Usage
from ..tiering.pipeline import Tierer
from .budget import Refusal, worst_case_micros
from .estimate import estimate_input_tokens, estimate_output_tokens
from .pricing import GpuHourTariff, Pricer, to_micros

__all__ = ["Plan", "PlanRow", "make_plan"]

BATCH_KINDS = frozenset({"openai", "anthropic"})  # backends with a provider batch API


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
    worst_micros: int | None = 0
    batch_api: bool = False

    def add(self, *, usage: Usage, max_tokens: int, pricer: Pricer, worst: int | None) -> None:
        self.jobs += 1
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.max_output_tokens += max_tokens
        tariff = pricer.tariff(self.backend)
        if tariff is None or isinstance(tariff, GpuHourTariff):
            # unknown, or priced by busy time, which tokens alone cannot predict
            self.cost = self.batch_cost = None
        elif self.cost is not None and self.batch_cost is not None:
            self.cost += tariff.cost(usage, batch=False, busy_s=0.0)
            self.batch_cost += tariff.cost(usage, batch=self.batch_api, busy_s=0.0)
        self.baseline += pricer.baseline.cost(usage, batch=False, busy_s=0.0)
        self.worst_micros = (
            None if worst is None or self.worst_micros is None else self.worst_micros + worst
        )

    def as_dict(self) -> dict[str, Any]:
        cost = None if self.cost is None else to_micros(self.cost)
        return {
            "tier": self.tier,
            "backend": self.backend,
            "model": self.model,
            "jobs": self.jobs,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "max_output_tokens": self.max_output_tokens,
            "cost_micros": cost,
            "batch_cost_micros": None if self.batch_cost is None else to_micros(self.batch_cost),
            "baseline_micros": to_micros(self.baseline),
            "savings_micros": None if cost is None else to_micros(self.baseline) - cost,
            "worst_case_micros": self.worst_micros,
            "batch_api": self.batch_api,
        }


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

    def as_dict(self) -> dict[str, Any]:
        totals = {
            key: self._sum(key)
            for key in (
                "jobs",
                "input_tokens",
                "output_tokens",
                "max_output_tokens",
                "cost_micros",
                "batch_cost_micros",
                "baseline_micros",
                "savings_micros",
                "worst_case_micros",
            )
        }
        return {
            "rows": [row.as_dict() for row in self.rows],
            "totals": totals,
            "invalid_lines": self.invalid,
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
) -> Plan:
    """Estimate every job's tokens and cost on the first backend of its tier's route."""
    pricer = Pricer(config)

    def max_tokens_for(name: str) -> int:  # as the router resolves it
        return config.backends[name].max_tokens or config.defaults.max_tokens

    rows: dict[tuple[int, str], PlanRow] = {}
    plan = Plan(baseline_model=config.baseline.model, max_cost_micros=max_cost_micros)
    for item in items:
        if isinstance(item, InvalidLine):
            plan.invalid += 1
            continue
        tier = tierer(item).tier
        chain = list(config.routes[tier])  # type: ignore[index]
        backend = chain[0]
        bc = config.backends[backend]
        row = rows.get((tier, backend))
        if row is None:
            model = str(getattr(bc, "model", None) or getattr(bc, "model_name", None) or bc.kind)
            row = rows[(tier, backend)] = PlanRow(
                tier, backend, model, batch_api=bc.kind in BATCH_KINDS
            )
        max_tokens = item.max_tokens or max_tokens_for(backend)
        usage = Usage(
            input_tokens=estimate_input_tokens(item, bc.kind),
            output_tokens=estimate_output_tokens(item, max_tokens),
        )
        worst = worst_case_micros(pricer, item, chain, max_tokens_for)
        row.add(
            usage=usage,
            max_tokens=max_tokens,
            pricer=pricer,
            worst=None if isinstance(worst, Refusal) else worst,
        )
    plan.rows = sorted(rows.values(), key=lambda r: (r.tier, r.backend))
    return plan
