"""`tierline plan`: estimated tokens, cost and savings per tier and backend; nothing is sent
(except with --calibrate, which sends a few sample jobs to the self-hosted backends)."""

from __future__ import annotations

import sys
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ..config import load_config
from ..errors import ExitCode
from ..jobs import dumps
from ..ledger.pricing import to_micros
from ..ledger.store import ledger_path_for
from ..run.plan import Plan
from ..run.planner import plan_files
from ..run.projection import Projection, parse_tokens
from .options import ConfigPath, Inputs, Json, LedgerPath, MaxCost
from .output import data_console, err_console, print_table

if TYPE_CHECKING:
    from ..run.calibrate import Calibration

DailyTokens = Annotated[
    str | None,
    typer.Option(
        "--daily-tokens",
        metavar="N",
        help="Project to this many tokens a day (input + output; 100M, 2.5G, 750k): cost per "
        "day all on the baseline model, on the tiered routes, and with provider batch APIs, "
        "and the GPU-hours a day the self-hosted backends need.",
        show_default=False,
    ),
]
Scale = Annotated[
    float | None,
    typer.Option(
        "--scale",
        min=0,
        metavar="K",
        help="Project to K times these jobs a day (instead of --daily-tokens).",
        show_default=False,
    ),
]
Calibrate = Annotated[
    int,
    typer.Option(
        "--calibrate",
        min=0,
        metavar="N",
        help="First send N of these jobs to each gpu_hour_usd backend the plan uses and "
        "measure its throughput (recorded in the ledger like a run; it costs their GPU time, "
        "paid within --max-cost like a run's calls).",
    ),
]


def _usd(micros: int | None) -> str:
    return "unknown" if micros is None else f"${micros / 1e6:,.4f}"


def plan(
    inputs: Inputs,
    config: ConfigPath = None,
    as_json: Json = False,
    max_cost: MaxCost = None,
    ledger: LedgerPath = None,
    daily_tokens: DailyTokens = None,
    scale: Scale = None,
    calibrate: Calibrate = 0,
) -> None:
    """Estimate what the jobs would cost per tier and backend, synchronously and through
    provider batch APIs, against the baseline model. Nothing is sent (but see --calibrate).

    A gpu_hour_usd backend is priced through its throughput: measured on its newest calls in
    the ledger, else its `throughput` hint in the config; each row says which. Exit 0, or 3
    when --max-cost is given and the estimate passes it (or cannot be made because a backend
    has no known price), or when --max-cost stopped --calibrate from sending all its jobs.
    """
    cfg = load_config(config)
    daily = parse_tokens(daily_tokens) if daily_tokens is not None else None  # before any work
    report = plan_files(
        inputs,
        cfg,
        ledger_path_for(ledger, cfg),
        max_cost_micros=None if max_cost is None else to_micros(Decimal(repr(max_cost))),
        daily_tokens=daily,
        scale=scale,
        calibrate=calibrate,
    )
    if calibrate:
        _calibrated(report.calibrations)
    result, projection = report.plan, report.projection
    if as_json:
        doc: dict[str, Any] = result.as_dict()
        if projection is not None:
            doc["projection"] = projection.as_dict()
        sys.stdout.buffer.write(dumps(doc) + b"\n")
    else:
        out = data_console()
        print_table(_table(result), out)
        for row in result.rows:
            estimate = f" (estimated here: {row.output_tokens / row.jobs:,.0f} output tokens/job)"
            measured = row.throughput is not None and row.throughput.calls > 0
            basis = row.basis + (estimate if measured and row.gpu_hour_usd is not None else "")
            out.print(f"  tier {row.tier} {row.backend}: {basis}", markup=False)
        out.print(duration_line(result), markup=False)
        if projection is not None:
            out.print()
            for renderable in projection_tables(projection, result.baseline_model):
                if isinstance(renderable, Table):
                    print_table(renderable, out)
                else:
                    out.print(renderable)
        for line in _notes(result):
            err_console.print(f"tierline: {line}", markup=False)
    raise typer.Exit(int(ExitCode.BUDGET) if report.over_budget else 0)


def _calibrated(done: list[Calibration]) -> None:
    if not done:
        err_console.print(
            "tierline: --calibrate: no backend priced by gpu_hour_usd heads a route (or there "
            "are no jobs): nothing was sent",
            markup=False,
        )
    for c in done:
        t = c.summary.tally
        err_console.print(
            f"tierline: calibrated {c.backend}: {t.jobs} job(s) in {c.summary.seconds:.1f}s, "
            f"{t.failed} failed, {t.usage.output_tokens:,} output tokens, "
            f"cost ${t.cost_usd:,.6f} (run {c.run_id})",
            markup=False,
        )
        if c.skipped_budget:
            err_console.print(
                f"tierline: --max-cost: {c.skipped_budget} calibration job(s) on {c.backend} "
                "not sent: each reserves its worst case first (gpu_hour_usd for timeout_s x "
                "max_attempts of busy time), and it no longer fitted (exit 3)",
                markup=False,
            )


def _plus_minus(cost: int | None, error: int | None) -> str:
    return _usd(cost) + ("" if error is None or cost is None else f" ±{_usd(error)[1:]}")


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
            _plus_minus(row["cost_micros"], row["cost_error_micros"]),
            _usd(row["batch_cost_micros"]),
            _usd(row["baseline_micros"]),
            _usd(row["savings_micros"]),
        )
    return table


def _day(micros: int | None) -> str:
    return "unknown" if micros is None else f"${micros / 1e6:,.2f}"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def duration_line(result: Plan) -> str:
    """When the run would finish, from each backend's predicted busy time (or why unknown)."""
    d = result.duration()
    if d["longest_backend"] is None:
        return "time: nothing to run"
    if d["seconds"] is not None:
        return (
            f"time: about {_clock(d['seconds'])} at the measured concurrency "
            f"(backends work in parallel; the longest is {d['longest_backend']})"
        )
    unknown = ", ".join(d["unknown_backends"])
    return (
        f"time: unknown (no measured calls on {unknown} in the ledger: run some jobs there, or "
        f"`plan --calibrate N` for self-hosted backends); at least {_clock(d['at_least_s'])} "
        "by the backends measured and the rate limits"
    )


def _saved(saved: int | None, share: float | None) -> str:
    if saved is None:
        return "unknown"
    return _day(saved) + ("" if share is None else f" ({share:.0%})")


def projection_tables(p: Projection, baseline_model: str) -> list[Table | str]:
    """The per-day comparison, the tier mix per day, and the GPU-hours line."""
    d = p.as_dict()
    head = (
        f"Per day at {d['tokens_per_day']:,} tokens ({d['jobs_per_day']:,} jobs, "
        f"{p.scale:,.2f}x these jobs; same tier mix and token lengths):"
    )
    money = Table(
        "scenario",
        "cost per day",
        "saved vs (a)",
        "saved vs (a')",
        title=head,
        title_justify="left",
    )
    money.add_row(f"(a) all on {baseline_model}", _day(p.baseline_micros), "", "")
    money.add_row(f"(a') all on {baseline_model}, batch API", _day(p.baseline_batch_micros), "", "")
    money.add_row(
        "(b) tiered routes, self-hosted paid per busy GPU-hour",
        _day(p.tiered_micros),
        _saved(d["tiered_savings_micros_per_day"], d["tiered_savings_share"]),
        "",
    )
    servers = ", ".join(f"{n}x {name}" for name, n in p.dedicated_servers.items() if n is not None)
    if servers:
        money.add_row(
            f"(b') tiered routes, whole servers paid 24 h ({servers})",
            _day(p.dedicated_micros),
            _saved(
                d["tiered_dedicated_savings_micros_per_day"], d["tiered_dedicated_savings_share"]
            ),
            "",
        )
    money.add_row(
        "(c) as (b), provider batch APIs where there is one",
        _day(p.tiered_batch_micros),
        _saved(d["tiered_batch_savings_micros_per_day"], d["tiered_batch_savings_share"]),
        _saved(
            d["tiered_batch_savings_vs_baseline_batch_micros_per_day"],
            d["tiered_batch_savings_vs_baseline_batch_share"],
        ),
    )
    mix = Table("tier", "backend", "share of jobs", "tokens in/day", "tokens out/day", "cost/day")
    for m in p.mix:
        mix.add_row(
            str(m["tier"]),
            m["backend"],
            f"{m['job_share']:.0%}",
            f"{m['input_tokens_per_day']:,}",
            f"{m['output_tokens_per_day']:,}",
            _day(m["cost_micros_per_day"]),
        )
    out: list[Table | str] = [money, mix]
    if p.gpu_hours:
        parts = []
        for name, hours in p.gpu_hours.items():
            error = p.gpu_hours_error.get(name)
            if hours is None:
                parts.append(f"{name} unknown")
                continue
            spread = "" if error is None else f" ±{error:,.1f}"
            parts.append(f"{name} {hours:,.1f}{spread} ({hours / 24:.0%} of one server's day)")
        out.append(
            f"GPU-hours per day (busy time, the unit gpu_hour_usd prices): {'; '.join(parts)}"
        )
    return out


def _notes(result: Plan) -> list[str]:
    lines = [
        f"NO KNOWN PRICE for backend {row.backend!r} ({row.model}): {row.basis}"
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


__all__ = ["plan", "projection_tables"]
