"""`tierline batch status|collect|cancel`: provider batches (OpenAI Batch, Anthropic Message
Batches) submitted by `tierline run`; docs/batches.md is the guide.

Also `run`'s options `--provider-batch` / `--wait` and `RunView`, how `run` shows its batches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..config import Config, load_config
from ..dispatch import batch as batches
from ..errors import ExitCode
from ..jobs import Result, dumps
from ..ledger.store import ledger_path_for
from .options import ConfigPath, Json, LedgerPath, Quiet
from .output import err_console, print_summary
from .preflight import check_sqlite

if TYPE_CHECKING:
    from ..run import RunSummary

__all__ = ["ProviderBatch", "RunView", "Wait", "app", "batch_progress"]

app = typer.Typer(
    help="Provider batches (half price, done within 24 h): status, collect, cancel.",
    no_args_is_help=True,
)

ProviderBatch = Annotated[
    bool,
    typer.Option(
        "--provider-batch",
        help="Send the jobs of every backend whose kind has a provider batch API through it "
        '(50% off, done within 24 h); same as mode = "batch" on each of them.',
    ),
]
Wait = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="Wait until the provider batches end and write their results (else exit 4 with "
        "'pending' results, and collect later).",
    ),
]
RunIds = Annotated[
    list[str] | None,
    typer.Argument(
        help="Run ids (default: every run with batches still open).", show_default=False
    ),
]


@contextmanager
def batch_progress(*, quiet: bool) -> Iterator[Callable[[batches.Progress], None] | None]:
    """A progress callback that draws on stderr while waiting (None when not a terminal).

    The bar is drawn on the first report of an open batch: a run with no provider batches
    (the callback is never called) draws nothing.
    """
    if quiet or not err_console.is_terminal:
        yield None
        return
    columns = (TextColumn("[bold]batches"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar = Progress(*columns, TextColumn("{task.description}"), console=err_console)
    task = bar.add_task("", total=None)

    def show(p: batches.Progress) -> None:
        states = ", ".join(f"{s}: {n}" for s, n in sorted(p.statuses.items()))
        bar.update(task, total=p.requests, completed=p.done, description=states)
        if not bar.live.is_started:  # after the update: the first frame has the counts
            bar.start()

    try:
        yield show
    finally:
        if bar.live.is_started:
            bar.stop()


def _stdout_line(result: Result) -> None:
    sys.stdout.buffer.write(dumps(result.to_dict()) + b"\n")
    sys.stdout.buffer.flush()


def _report(report: batches.CollectReport, *, quiet: bool) -> int:
    code = report.exit_code
    if not quiet or code != ExitCode.OK:
        err_console.print(
            f"tierline: batches: {report.collected} collected, {report.resubmitted} job(s) "
            f"resubmitted; jobs: {report.ok} ok, {report.failed} failed, "
            f"{report.pending} pending",
            markup=False,
        )
    return int(code)


@dataclasses.dataclass(frozen=True)
class RunView:
    """`run` on stderr (run/command.py's `View`): the batches' bar and report, the summary."""

    quiet: bool

    def waiting(self) -> AbstractContextManager[Callable[[batches.Progress], None] | None]:
        return batch_progress(quiet=self.quiet)

    def collected(self, report: batches.CollectReport) -> None:
        _report(report, quiet=self.quiet)
        if not self.quiet:
            for note in report.notes:
                err_console.print(f"  note: {note}", markup=False)

    def finished(self, summary: RunSummary) -> None:
        print_summary(summary, quiet=self.quiet)


@app.command()
def status(
    run_ids: RunIds = None,
    config: ConfigPath = None,
    ledger: LedgerPath = None,
    every: Annotated[bool, typer.Option("--all", help="Collected batches too.")] = False,
    as_json: Json = False,
) -> None:
    """List provider batches, asking each provider where it stands (--json: one object per
    batch on stdout).

    Exit 0 when nothing is pending, 4 when some batch has jobs still pending.
    """
    cfg = load_config(config)
    rows = asyncio.run(batches.batch_status(cfg, _ledger(ledger, cfg), everything=every))
    rows = [r for r in rows if not run_ids or r.batch.run_id in run_ids]
    for r in rows if as_json else []:
        record = {**dataclasses.asdict(r.batch), "live": r.live, "note": r.note}
        record["output"] = r.submission.output if r.submission else None
        sys.stdout.buffer.write(dumps(record) + b"\n")
    for r in [] if as_json else rows:
        b = r.batch
        seen = "" if r.live else " (as last seen)"
        counts = " ".join(f"{k}={v}" for k, v in b.counts.items())
        where = r.submission.output if r.submission else "?"
        err_console.print(
            f"{b.run_id}  {b.backend}  {b.batch_id or '-'}  {b.status}{seen}  "
            f"{b.requests} request(s)  {counts}  -> {where}",
            markup=False,
        )
        if r.note or b.error:
            err_console.print(f"  note: {r.note or b.error}", markup=False)
    if not rows and not as_json:
        err_console.print("tierline: no provider batches pending", markup=False)
    pending = any(r.batch.collected_at is None for r in rows)
    raise typer.Exit(int(ExitCode.PENDING if pending else ExitCode.OK))


def _ledger(path: str | None, cfg: Config) -> Path:
    target = ledger_path_for(path, cfg)
    return check_sqlite(target, f"ledger {target}")


@app.command()
def collect(
    run_ids: RunIds = None,
    config: ConfigPath = None,
    ledger: LedgerPath = None,
    wait: Wait = False,
    resubmit: Annotated[
        bool,
        typer.Option(
            "--resubmit", help="Put jobs that never ran (expired, cancelled) into new batches."
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Fetch the results of ended batches into the results they belong to.

    A results file has each pending line replaced by the job's final result; a run that wrote
    to stdout gets the final lines on stdout. Exit 0 all ok, 1 some failed, 4 still pending.
    """
    cfg = load_config(config)
    with batch_progress(quiet=quiet) as show:
        report = asyncio.run(
            batches.collect(
                cfg,
                _ledger(ledger, cfg),
                run_ids or None,
                wait=wait,
                resubmit=resubmit,
                on_progress=show,
                stdout=_stdout_line,
            )
        )
    raise typer.Exit(_report(report, quiet=quiet))


@app.command()
def cancel(
    run_ids: RunIds = None,
    config: ConfigPath = None,
    ledger: LedgerPath = None,
) -> None:
    """Ask the providers to cancel open batches; what finished is kept (collect fetches it)."""
    cfg = load_config(config)
    count = asyncio.run(batches.cancel_batches(cfg, _ledger(ledger, cfg), run_ids or []))
    err_console.print(f"tierline: asked to cancel {count} batch(es)", markup=False)
