"""`tierline plan` behind the command: measure (with --calibrate), plan, project."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..jobs import read_jobs
from ..ledger.throughput import open_readonly
from ..tiering.pipeline import Tierer
from .plan import Plan, make_plan
from .projection import Projection, project

if TYPE_CHECKING:
    from .calibrate import Calibration

__all__ = ["PlanReport", "plan_files"]


@dataclass
class PlanReport:
    """What `tierline plan` shows: the plan, its projection to a daily volume (when asked
    for) and the calibration runs made first (with --calibrate)."""

    plan: Plan
    projection: Projection | None = None
    calibrations: list[Calibration] = field(default_factory=list)

    @property
    def over_budget(self) -> bool:
        """The estimate passes --max-cost, or --max-cost stopped the calibration."""
        return self.plan.over_budget or any(c.skipped_budget for c in self.calibrations)


def plan_files(
    inputs: list[str],
    config: Config,
    ledger_path: Path,
    *,
    max_cost_micros: int | None = None,
    daily_tokens: int | None = None,
    scale: float | None = None,
    calibrate: int = 0,
) -> PlanReport:
    """Plan the jobs of `inputs` against the throughput measured in the ledger (read only);
    with `calibrate`, first send that many jobs to each gpu_hour_usd backend to measure it,
    spending at most `max_cost_micros` on them all."""
    calibrations = []
    if calibrate:
        from .calibrate import calibrate as measure  # sends jobs: imported only when asked

        calibrations = measure(
            inputs, config, ledger_path, calibrate, max_cost_micros=max_cost_micros
        )
    conn = open_readonly(ledger_path)
    try:
        plan = make_plan(
            read_jobs(inputs),
            config=config,
            tierer=Tierer.from_config(config.tiering),
            max_cost_micros=max_cost_micros,
            ledger=conn,
        )
    finally:
        if conn is not None:
            conn.close()
    projection = None
    if daily_tokens is not None or scale is not None:
        projection = project(plan, daily_tokens=daily_tokens, scale=scale)
    return PlanReport(plan, projection, calibrations)
