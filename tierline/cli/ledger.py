"""`tierline ledger ...`: read the cost ledger (totals and savings, runs, exports).

A Typer sub-app: each command opens the ledger, calls one function of tierline.ledger.reports
and renders the result. Add a command with `@app.command(...)`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..config import load_config
from ..errors import UsageError
from ..jobs import dumps
from ..ledger.reports import (
    Filters,
    SummaryRow,
    export_calls,
    list_runs,
    parse_since,
    parse_until,
    reused_answers,
    summarize,
    total,
)
from ..ledger.store import Ledger, ledger_path_for
from .options import ConfigPath, Json, LedgerPath
from .output import err_console, print_table
from .preflight import check_sqlite, resolve_output

__all__ = ["app", "open_ledger"]

app = typer.Typer(
    help="Read the cost ledger: totals and savings, runs, exports.",
    no_args_is_help=True,
)


By = Annotated[
    str | None,
    typer.Option("--by", help="Group by any of: tier, backend, model, day, run (comma-separated)."),
]
Since = Annotated[
    str | None,
    typer.Option("--since", help="Only calls since a duration ago (24h, 7d) or a date (UTC)."),
]
Until = Annotated[
    str | None,
    typer.Option(
        "--until",
        help="Only calls before a duration ago (1d) or a date/time (UTC; a date includes its day).",
    ),
]
RunId = Annotated[str | None, typer.Option("--run", help="Only this run (see `ledger runs`).")]


def ledger_file(path: str | None, config: str | None) -> Path:
    """The ledger named by --ledger / the config; an error (exit 2) if there is none yet."""
    target = ledger_path_for(path, load_config(config))
    if not target.is_file():
        raise UsageError(f"no ledger at {target} (it is created by the first `tierline run`)")
    return check_sqlite(target, f"ledger {target}")


@contextmanager
def open_ledger(path: str | None, config: str | None) -> Iterator[Ledger]:
    with Ledger(ledger_file(path, config)) as ledger:
        yield ledger


def output_beside(output: str, ledger: Path) -> str:
    """`-o` of a report or an export: never the ledger, a device or a directory (the same
    checks as `run -o`, cli/preflight.py); the real path."""
    real = resolve_output(output, [], ledger, None)
    assert real is not None  # output is not stdout
    return real


def _filters(run: str | None, since: str | None, until: str | None = None) -> Filters:
    return Filters(
        run_id=run,
        since=parse_since(since) if since else None,
        until=parse_until(until) if until else None,
    )


def _usd(nanos: int) -> str:
    return f"${nanos / 1e9:,.6f}"


def _summary_table(rows: list[SummaryRow], by: list[str]) -> Table:
    table = Table(*by, "calls", "jobs", "tokens in", "tokens out", "cost", "unpriced", "baseline")
    table.add_column("saved")
    table.add_column("failed checks")
    gpu = any(row.busy_s for row in rows)
    if gpu:
        table.add_column("GPU-hours")
    shown = [*rows, total(rows)] if by and len(rows) > 1 else rows
    for row in shown:
        cells = [str(row.group[name]) for name in by] if row.group else ["all"] * len(by)
        rate = row.check_failure_rate
        share = "" if row.savings_share is None else f" ({row.savings_share:.0%})"
        table.add_row(
            *cells,
            f"{row.calls:,}",
            f"{row.jobs:,}",
            f"{row.input_tokens:,}",
            f"{row.output_tokens:,}",
            _usd(row.cost_nanos),
            f"{row.unpriced_calls:,}" if row.unpriced_calls else "",
            _usd(row.baseline_nanos),
            _usd(row.savings_nanos) + share,
            f"{row.failed_checks:,} ({rate:.0%})" if row.failed_checks and rate is not None else "",
            *([f"{row.busy_s / 3600:,.3f}"] if gpu else []),
        )
    return table


@app.command("summary")
def summary(
    by: By = None,
    since: Since = None,
    until: Until = None,
    run: RunId = None,
    as_json: Json = False,
    ledger: LedgerPath = None,
    config: ConfigPath = None,
) -> None:
    """Calls, tokens, cost and savings against the baseline, grouped --by tier,backend,model,day.

    The cost is what was paid (provider batch calls at their batch price); the baseline is what
    the same tokens would have cost on the baseline model in the same mode; GPU-hours are the
    measured busy time of self-hosted backends. Calls whose price is unknown are counted apart
    (never as free) and left out of both the cost and the baseline. `--by day` lists days in
    date order.
    """
    groups = [name.strip() for name in by.split(",") if name.strip()] if by else []
    with open_ledger(ledger, config) as book:
        rows = summarize(book.conn, groups, _filters(run, since, until))
        deduped, cached = reused_answers(book.conn, _filters(run, since, until))
    if as_json:
        sys.stdout.buffer.write(dumps([row.as_dict() for row in rows]) + b"\n")
        return
    print_table(_summary_table(rows, groups))
    if deduped or cached:  # no calls rows: they are not in the table's calls
        err_console.print(
            f"tierline: {deduped + cached} job(s) reused an answer at no cost: {deduped} "
            f"copied an identical job's (dedup), {cached} from the answer cache",
            markup=False,
        )
    unpriced = sum(row.unpriced_calls for row in rows)
    if unpriced:
        err_console.print(
            f"tierline: {unpriced} call(s) have NO KNOWN PRICE and are not in these totals; "
            "`tierline ledger export` shows them (cost_nanos empty)",
            markup=False,
        )


@app.command("runs")
def runs(
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many.")] = 20,
    as_json: Json = False,
    ledger: LedgerPath = None,
    config: ConfigPath = None,
) -> None:
    """Runs, newest first: jobs, status, cost, unpriced calls and the baseline."""
    with open_ledger(ledger, config) as book:
        rows = list_runs(book.conn, _filters(None, since, until), limit)
    if as_json:
        sys.stdout.buffer.write(dumps(rows) + b"\n")
        return
    table = Table(
        "run", "started", "status", "jobs", "ok", "failed", "cost", "unpriced", "baseline"
    )
    for r in rows:
        table.add_row(*_run_cells(r))
    print_table(table)


def _run_cells(r: dict[str, Any]) -> list[str]:
    return [
        r["id"],
        (r["started_at"] or "")[:19],
        r["status"],
        str(r["jobs"]),
        str(r["ok"]),
        str(r["failed"]),
        _usd(r["cost_nanos"] or 0),
        str(r["unpriced_calls"] or ""),
        _usd(r["baseline_nanos"] or 0),
    ]


@app.command("report")
def report(
    output: Annotated[
        str, typer.Option("--output", "-o", help="The HTML file to write ('-': stdout).")
    ],
    since: Since = None,
    until: Until = None,
    run: RunId = None,
    ledger: LedgerPath = None,
    config: ConfigPath = None,
) -> None:
    """One self-contained HTML page (works offline) with charts: spend per day by tier and by
    backend, savings against the baseline, tier mix, check-failure and escalation rates,
    latency percentiles per backend and the top-cost jobs."""
    from ..ledger.html import render_report  # only this command needs it
    from ..ledger.reports import report_data

    window = " ".join(
        f"{name} {value}"
        for name, value in (("run", run), ("since", since), ("until", until))
        if value
    )
    target = ledger_file(ledger, config)
    output = output if output == "-" else output_beside(output, target)
    with Ledger(target) as book:
        data = report_data(book.conn, _filters(run, since, until))
    page = render_report(data, window=window or "all calls").encode()
    if output == "-":
        sys.stdout.buffer.write(page)
        return
    # A report mailed or served from cron must never be half a file: write beside, then rename.
    tmp = f"{output}.tmp"
    with open(tmp, "wb") as stream:
        stream.write(page)
    os.replace(tmp, output)


@app.command("export")
def export(
    fmt: Annotated[str, typer.Option("--format", "-f", help="csv or jsonl.")] = "csv",
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="File (default: stdout).")
    ] = None,
    since: Since = None,
    until: Until = None,
    run: RunId = None,
    ledger: LedgerPath = None,
    config: ConfigPath = None,
) -> None:
    """Every call row with all its ledger columns (costs in micro-dollars and in USD)."""
    target = ledger_file(ledger, config)
    if output not in (None, "-"):
        output = output_beside(output, target)
    with Ledger(target) as book:
        if output is None or output == "-":
            export_calls(book.conn, _filters(run, since, until), fmt, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        with open(output, "wb") as stream:
            export_calls(book.conn, _filters(run, since, until), fmt, stream)


@app.command("merge")
def merge(
    sources: Annotated[list[str], typer.Argument(help="Ledger files to merge (one per host).")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="The merged ledger (created, or merged into).")
    ],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Combine the ledgers of `--shard` runs on several hosts; merging twice adds nothing."""
    from ..ledger.merge import merge_ledgers  # only this command needs it

    for path in [*sources, output]:
        check_sqlite(Path(path), f"ledger {path}")
    report = merge_ledgers(sources, output)
    if not quiet:
        rows = ", ".join(f"{n} {t}" for t, n in sorted(report.rows.items())) or "no rows"
        err_console.print(
            f"tierline: merged {len(sources)} ledger(s) into {output}: "
            f"{report.runs_added} run(s) added, {report.runs_updated} updated, "
            f"{report.runs_unchanged} already there ({rows})",
            markup=False,
        )
    if report.ignored_tables and not quiet:
        err_console.print(
            f"tierline: warning: tables unknown to this tierline were not merged: "
            f"{', '.join(sorted(report.ignored_tables))}",
            markup=False,
        )
