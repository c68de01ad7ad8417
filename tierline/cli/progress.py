"""What a run shows while it runs and when it ends, on stderr.

On a terminal: one live line with what people act on: jobs done (of the total when the input is
a file), jobs per second, the time left, the money spent so far (against the cap with
`--max-cost`) and the failures so far. Nothing is drawn for a stage that does not run.

On a pipe or a file (cron, CI, `2>log`) or with `-q`: no progress at all, and the summary is
one line, so cron mail gets one line per run (with `-q`, only when something failed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from ..jobs import Result
from ..run import RunSummary

__all__ = ["run_progress", "summary_line"]

WIDE = 110  # terminal columns from which the bar is drawn too


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class _Line(ProgressColumn):
    """Everything but the bar, as one unwrapped text: done, rate, time left, spend, failures,
    elapsed (rich's own columns wrap onto a second line on an 80-column terminal)."""

    def render(self, task: Task) -> Text:
        done = f"{task.completed:,.0f}"
        parts = [done if task.total is None else f"{done}/{task.total:,.0f}"]
        speed = task.finished_speed or task.speed
        if speed is not None:
            parts.append(f"{speed:,.1f} jobs/s")
        if task.total is not None:  # time left needs a total (not when reading a pipe)
            left = task.time_remaining
            parts.append("ETA ?" if left is None else f"ETA {_clock(left)}")
        if task.fields["failed"]:  # before the spend: on a narrow terminal the end is cut
            parts.append(task.fields["failed"])
        parts.append(task.fields["spend"])
        parts.append(_clock(task.elapsed or 0))
        return Text(", ".join(parts), no_wrap=True, overflow="ellipsis")


class _Tally:
    """Spend and failures so far, rendered into the task's fields."""

    def __init__(self, max_cost_usd: float | None) -> None:
        self.cap = max_cost_usd
        self.spent = 0.0
        self.unpriced = 0
        self.failed = 0

    def add(self, result: Result) -> None:
        if result.cost_usd is None:
            self.unpriced += 1
        else:
            self.spent += result.cost_usd
        if result.status not in ("ok", "pending"):
            self.failed += 1

    def spend(self) -> str:
        text = f"${self.spent:,.4f}"
        if self.cap is not None:
            text += f" of ${self.cap:,.2f} cap"
        if self.unpriced:
            text += f" (+{self.unpriced} unpriced)"
        return text

    def failures(self) -> str:
        return f"{self.failed:,} failed" if self.failed else ""


def _columns(total: int | None, width: int) -> list[ProgressColumn]:
    columns: list[ProgressColumn] = [TextColumn("[bold]tierline")]
    if total is not None and width >= WIDE:  # a bar only where it fits beside the numbers
        columns.append(BarColumn(bar_width=20))
    return [*columns, _Line()]


@contextmanager
def run_progress(
    total: int | None,
    *,
    console: Console,
    quiet: bool,
    max_cost_usd: float | None = None,
    kept: Callable[[], int] = lambda: 0,
) -> Iterator[Callable[[Result], None]]:
    """Yield a per-result callback that updates the live line (a no-op off a terminal).

    `kept` counts the jobs a resumed run does not dispatch again (they are found while the
    input is read): they leave the total, so the ETA is for the jobs actually sent.
    """
    if quiet or not console.is_terminal:
        yield lambda _result: None
        return
    tally = _Tally(max_cost_usd)
    with Progress(*_columns(total, console.width), console=console, transient=True) as progress:
        task = progress.add_task("jobs", total=total, spend=tally.spend(), failed="")

        def advance(result: Result) -> None:
            tally.add(result)
            progress.update(
                task,
                advance=1,
                total=None if total is None else total - kept(),
                spend=tally.spend(),
                failed=tally.failures(),
            )

        yield advance


def summary_line(summary: RunSummary, *, notes: Sequence[str] = ()) -> str:
    """The whole run summary in one line (for cron mail and logs)."""
    t = summary.tally
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(t.by_status.items()))
    head = f"tierline: {t.jobs} job(s) in {summary.seconds:.1f}s, {t.failed} failed"
    parts = [f"{head} ({statuses})" if statuses else head]
    cost = f"cost ${t.cost_usd:,.6f}"
    if t.unpriced:
        cost += f" + {t.unpriced} job(s) with NO KNOWN PRICE"
    parts.append(cost)
    if (top := t.top_error()) is not None:
        parts.append(f"most common error, {top}")
    parts.extend(notes or summary.notes)
    if summary.run_id:
        parts.append(f"run {summary.run_id}")
    return "; ".join(parts)
