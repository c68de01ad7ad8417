"""`tierline plan`: estimated tokens, cost and savings per tier and backend; nothing is sent."""

from __future__ import annotations

import sys
from decimal import Decimal

import typer
from rich.table import Table

from ..config import load_config
from ..errors import ExitCode
from ..jobs import dumps, read_jobs
from ..ledger.plan import Plan, make_plan
from ..ledger.pricing import to_micros
from ..tiering.pipeline import Tierer
from .options import ConfigPath, Inputs, Json, MaxCost
from .output import data_console, err_console


def _usd(micros: int | None) -> str:
    return "unknown" if micros is None else f"${micros / 1e6:,.4f}"


def plan(
    inputs: Inputs,
    config: ConfigPath = None,
    as_json: Json = False,
    max_cost: MaxCost = None,
) -> None:
    """Estimate what the jobs would cost per tier and backend, synchronously and through
    provider batch APIs, against the baseline model. Nothing is sent.

    Exit 0, or 3 when --max-cost is given and the estimate passes it (or cannot be made
    because a backend has no known price).
    """
    cfg = load_config(config)
    cap = None if max_cost is None else to_micros(Decimal(repr(max_cost)))
    result = make_plan(
        read_jobs(inputs), config=cfg, tierer=Tierer.from_config(cfg.tiering), max_cost_micros=cap
    )
    if as_json:
        sys.stdout.buffer.write(dumps(result.as_dict()) + b"\n")
    else:
        data_console().print(_table(result))
        for line in _notes(result):
            err_console.print(f"tierline: {line}", markup=False)
    raise typer.Exit(int(ExitCode.BUDGET) if result.over_budget else 0)


def _table(result: Plan) -> Table:
    table = Table(
        "tier", "backend", "model", "jobs", "tokens in", "tokens out", "cost", "batch API"
    )
    table.add_column(f"baseline ({result.baseline_model})")
    table.add_column("saved")
    for row in [*(r.as_dict() for r in result.rows), {**result.as_dict()["totals"], "tier": "all"}]:
        table.add_row(
            str(row["tier"]),
            row.get("backend", ""),
            row.get("model", ""),
            f"{row['jobs']:,}",
            f"{row['input_tokens']:,}",
            f"{row['output_tokens']:,}",
            _usd(row["cost_micros"]),
            _usd(row["batch_cost_micros"]),
            _usd(row["baseline_micros"]),
            _usd(row["savings_micros"]),
        )
    return table


def _notes(result: Plan) -> list[str]:
    lines = [
        f"NO KNOWN PRICE for backend {row.backend!r} ({row.model}); its cost is unknown "
        "(a gpu_hour_usd price depends on busy time: give backends.<name>.price to estimate)"
        for row in result.unpriced
    ]
    if result.invalid:
        lines.append(f"{result.invalid} invalid line(s) are not jobs and cost nothing")
    worst = result.as_dict()["totals"]["worst_case_micros"]
    if result.max_cost_micros is not None:
        verdict = "OVER" if result.over_budget else "within"
        lines.append(
            f"estimate {_usd(result.cost_micros)} is {verdict} --max-cost "
            f"{_usd(result.max_cost_micros)} (worst case, as `run` reserves it: {_usd(worst)})"
        )
    return lines
