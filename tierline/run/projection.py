"""A plan scaled to a daily volume: what a day of this workload costs all on the baseline model,
on the configured tiered routes, and on those routes with provider batch APIs where a backend
has one, and how many GPU-hours a day the self-hosted part needs.

The projection keeps the plan's tier mix and per-job token counts and multiplies them; busy
time scales with calls and tokens at the measured throughput, so it assumes the servers run at
the concurrency they were measured at (more load usually batches better: an upper bound on
GPU-hours, if the servers keep up).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..errors import UsageError
from ..ledger.pricing import SECONDS_PER_HOUR, to_micros
from .plan import Plan, PlanRow

__all__ = ["Projection", "parse_tokens", "project"]

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
_AMOUNT = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgb]?)$", re.IGNORECASE)


def parse_tokens(text: str) -> int:
    """`--daily-tokens`: 100M, 2.5G (or B), 750k, or a plain number."""
    match = _AMOUNT.match(text.strip().replace("_", "").replace(",", ""))
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--daily-tokens {text!r}: give a positive amount like 100M, 2.5G or 750k")
    return round(float(match.group(1)) * _SUFFIX[match.group(2).lower()])


@dataclass(slots=True)
class Projection:
    scale: float  # the daily volume over the plan's
    jobs: float
    tokens: float  # input + output, estimated
    baseline_micros: int  # (a) everything on the baseline model, synchronously
    baseline_batch_micros: int  # (a') ... through its provider's batch API
    tiered_micros: int | None  # (b) the configured routes (None: a backend's price is unknown)
    tiered_batch_micros: int | None  # (c) ... with provider batch APIs where there is one
    gpu_hours: dict[str, float | None] = field(default_factory=dict)  # per self-hosted backend
    gpu_hours_error: dict[str, float | None] = field(default_factory=dict)  # 1 s.e., hours
    gpu_hour_usd: dict[str, Decimal] = field(default_factory=dict)
    mix: list[dict[str, Any]] = field(default_factory=list)  # per tier and backend, per day
    unknown: list[str] = field(default_factory=list)  # why a figure is unknown

    @staticmethod
    def _saved(cost: int | None, baseline: int) -> tuple[int | None, float | None]:
        if cost is None:
            return None, None
        return baseline - cost, (baseline - cost) / baseline if baseline else None

    @property
    def gpu_hours_total(self) -> float | None:
        values = list(self.gpu_hours.values())
        return None if any(v is None for v in values) else sum(v or 0.0 for v in values)

    @property
    def dedicated_servers(self) -> dict[str, int | None]:
        """Whole servers per self-hosted backend to run its busy hours within the day."""
        return {
            name: None if hours is None else max(1, math.ceil(hours / 24))
            for name, hours in self.gpu_hours.items()
        }

    @property
    def dedicated_micros(self) -> int | None:
        """(b) with each self-hosted backend's whole servers paid 24 h a day, not by busy time."""
        if self.tiered_micros is None:
            return None
        busy = sum(
            (Decimal(repr(h or 0.0)) * self.gpu_hour_usd[n] for n, h in self.gpu_hours.items()),
            Decimal(0),
        )
        whole = sum(
            (24 * (k or 0) * self.gpu_hour_usd[n] for n, k in self.dedicated_servers.items()),
            Decimal(0),
        )
        return self.tiered_micros - to_micros(busy) + to_micros(whole)

    def as_dict(self) -> dict[str, Any]:
        saved, share = self._saved(self.tiered_micros, self.baseline_micros)
        saved_batch, share_batch = self._saved(self.tiered_batch_micros, self.baseline_micros)
        vs_batch, vs_batch_share = self._saved(self.tiered_batch_micros, self.baseline_batch_micros)
        dedicated = self.dedicated_micros
        saved_dedicated, share_dedicated = self._saved(dedicated, self.baseline_micros)
        total = self.gpu_hours_total
        return {
            "scale": self.scale,
            "jobs_per_day": round(self.jobs),
            "tokens_per_day": round(self.tokens),
            "baseline_micros_per_day": self.baseline_micros,
            "baseline_batch_micros_per_day": self.baseline_batch_micros,
            "tiered_micros_per_day": self.tiered_micros,
            "tiered_savings_micros_per_day": saved,
            "tiered_savings_share": share,
            "tiered_batch_micros_per_day": self.tiered_batch_micros,
            "tiered_batch_savings_micros_per_day": saved_batch,
            "tiered_batch_savings_share": share_batch,
            "tiered_batch_savings_vs_baseline_batch_micros_per_day": vs_batch,
            "tiered_batch_savings_vs_baseline_batch_share": vs_batch_share,
            "dedicated_servers": self.dedicated_servers,
            "tiered_dedicated_micros_per_day": dedicated,
            "tiered_dedicated_savings_micros_per_day": saved_dedicated,
            "tiered_dedicated_savings_share": share_dedicated,
            "gpu_hours_per_day": self.gpu_hours,
            "gpu_hours_per_day_error": self.gpu_hours_error,
            "gpu_hours_per_day_total": total,
            "mix": self.mix,
            "unknown": self.unknown,
        }


def project(
    plan: Plan, *, daily_tokens: int | None = None, scale: float | None = None
) -> Projection:
    """Scale `plan` to `daily_tokens` (input + output) a day, or by `scale`."""
    plan_tokens = sum(r.input_tokens + r.output_tokens for r in plan.rows)
    if scale is None:
        if not plan_tokens or daily_tokens is None:
            raise UsageError("nothing to project: the plan has no jobs")
        scale = daily_tokens / plan_tokens
    k = Decimal(repr(scale))
    baseline = sum((r.baseline for r in plan.rows), Decimal(0)) * k
    baseline_batch = sum((r.baseline_batch for r in plan.rows), Decimal(0)) * k
    known = all(r.cost is not None and r.batch_cost is not None for r in plan.rows)
    out = Projection(
        scale=scale,
        jobs=sum(r.jobs for r in plan.rows) * scale,
        tokens=plan_tokens * scale,
        baseline_micros=to_micros(baseline),
        baseline_batch_micros=to_micros(baseline_batch),
        tiered_micros=to_micros(sum((r.cost or Decimal(0) for r in plan.rows), Decimal(0)) * k)
        if known
        else None,
        tiered_batch_micros=to_micros(
            sum((r.batch_cost or Decimal(0) for r in plan.rows), Decimal(0)) * k
        )
        if known
        else None,
    )
    all_jobs = sum(r.jobs for r in plan.rows) or 1
    for r in plan.rows:
        cost = None if r.cost is None else to_micros(r.cost * k)
        out.mix.append(
            {
                "tier": r.tier,
                "backend": r.backend,
                "model": r.model,
                "job_share": r.jobs / all_jobs,
                "jobs_per_day": round(r.jobs * scale),
                "input_tokens_per_day": round(r.input_tokens * scale),
                "output_tokens_per_day": round(r.output_tokens * scale),
                "cost_micros_per_day": cost,
                "batch_cost_micros_per_day": None
                if r.batch_cost is None
                else to_micros(r.batch_cost * k),
                "basis": r.basis,
            }
        )
        if r.cost is None:
            out.unknown.append(f"{r.backend}: {r.basis}")
        if r.gpu_hour_usd is None:
            continue
        out.gpu_hour_usd[r.backend] = r.gpu_hour_usd
        _add_gpu_hours(out, r.backend, *_gpu_hours(r, scale))
    return out


def _add_gpu_hours(out: Projection, backend: str, hours: float | None, error: float | None) -> None:
    # one backend may head several tiers' routes: hours add, errors add in quadrature
    if backend in out.gpu_hours:
        before, before_error = out.gpu_hours[backend], out.gpu_hours_error[backend]
        hours = None if before is None or hours is None else before + hours
        error = None if before_error is None or error is None else math.hypot(before_error, error)
    out.gpu_hours[backend], out.gpu_hours_error[backend] = hours, error


def _gpu_hours(row: PlanRow, scale: float) -> tuple[float | None, float | None]:
    """A self-hosted row's busy hours a day, and its standard error (None: not measured)."""
    thr = row.throughput
    if thr is None:
        return None, None
    calls, tokens = row.jobs * scale, row.output_tokens * scale
    hours = thr.busy_seconds(calls, tokens) / float(SECONDS_PER_HOUR)
    rel = thr.relative_error(calls, tokens)
    return hours, None if rel is None else hours * rel
