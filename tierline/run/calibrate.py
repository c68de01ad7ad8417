"""`tierline plan --calibrate N`: measure the self-hosted backends' throughput on sample jobs.

Each backend priced by `gpu_hour_usd` that heads a tier's route gets N of the input's jobs
(those the plan sends it first, then any), all at once as a run would send them, and every call
is recorded in the ledger as a run of its own (command `plan --calibrate`). The plan then learns
the throughput from those calls like from any other (`tierline.ledger.throughput`). The calls
are real: they cost their busy time, which the ledger records with each call.

Under `plan --max-cost` they are paid from one budget for the whole command, as `run
--max-cost` pays: each call's worst case is reserved before it is sent, and once the next one
does not fit, the rest (of this backend and of those after it) are skipped, unsent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..jobs import InvalidLine, Job, Result, read_jobs
from ..ledger.budget import Budget
from ..ledger.store import Ledger
from ..tiering.pipeline import Tierer
from .files import finish_run, start_run
from .loop import run_jobs
from .tally import RunSummary

__all__ = ["Calibration", "calibrate", "gpu_hour_heads"]


@dataclass(frozen=True, slots=True)
class Calibration:
    backend: str
    run_id: str
    summary: RunSummary

    @property
    def skipped_budget(self) -> int:
        """Sample jobs not sent: their worst case no longer fitted under --max-cost."""
        return self.summary.tally.by_status["skipped_budget"]


def gpu_hour_heads(config: Config) -> list[str]:
    """The gpu_hour_usd backends that head a tier's route: the ones a plan prices by busy time."""
    heads = {route[0] for route in config.routes.values()}
    return sorted(
        name for name in heads if getattr(config.backends[name], "gpu_hour_usd", None) is not None
    )


def _sample(items: Iterable[Job | InvalidLine], config: Config, backend: str, n: int) -> list[Job]:
    """The first n jobs the plan sends to `backend`, topped up with other jobs if there are
    fewer; one pass, and it stops reading once it has them."""
    tierer = Tierer.from_config(config.tiering)
    mine: list[Job] = []
    others: list[Job] = []
    for item in items:
        if not isinstance(item, Job):
            continue
        if config.route(tierer(item).tier)[0] == backend:
            mine.append(item)
            if len(mine) == n:
                break
        elif len(others) < n:
            others.append(item)
    return (mine + others)[:n]


def calibrate(
    inputs: list[str],
    config: Config,
    ledger_path: Path,
    n: int,
    *,
    max_cost_micros: int | None = None,
) -> list[Calibration]:
    """Send N sample jobs to each gpu_hour_usd backend the plan uses; record them in the ledger.
    `max_cost_micros` caps what all of them together may cost."""
    budget = None if max_cost_micros is None else Budget(max_cost_micros)
    done = []
    for backend in gpu_hour_heads(config):
        jobs = _sample(read_jobs(inputs), config, backend, n)
        if not jobs:
            continue
        # only this backend, no fallback and no escalation: every call measures it
        only = config.model_copy(
            update={"routes": {1: [backend], 2: [backend], 3: [backend]}, "escalation": None}
        )
        with Ledger(ledger_path) as ledger:
            run_id = start_run(
                ledger,
                config,
                _DISCARD,
                command="plan --calibrate",
                inputs=inputs,
                max_cost_micros=max_cost_micros,
            )
            summary = asyncio.run(
                run_jobs(
                    jobs,
                    config=only,
                    tierer=Tierer.from_config(config.tiering),
                    sink=_DISCARD.write,
                    ledger=ledger,
                    run_id=run_id,
                    budget=budget,
                )
            )
            failed = summary.tally.failed
            finish_run(ledger, run_id, summary.tally, "ok" if failed == 0 else "failed")
        done.append(Calibration(backend, run_id, summary))
    return done


class _Discard:
    """Calibration answers are not results: only their usage and busy time count."""

    def write(self, result: Result) -> None:
        del result


_DISCARD = _Discard()
