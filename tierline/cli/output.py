"""Everything people see: the stderr console and the run summary (the live progress line is in
`tierline.cli.progress`).

stdout carries data only. Progress appears only when stderr is a terminal; with a pipe or a
file there is no progress and the summary is one line; NO_COLOR turns colour off.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:  # the scheduler pulls in asyncio and the dispatch layer: not for --help
    from rich.table import Table

    from ..run import RunSummary, Tally

__all__ = [
    "count_lines",
    "data_console",
    "err_console",
    "print_summary",
    "print_table",
    "silence_stdout",
]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def count_lines(inputs: Sequence[str]) -> int | None:
    """Lines in regular input files (for the bar's total); None when reading a pipe."""
    if any(p == "-" or not os.path.isfile(p) for p in inputs):
        return None
    total = 0
    for path in inputs:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                total += block.count(b"\n")
    return total


def _counts(counter: dict[str, int] | dict[int, int], prefix: str = "") -> str:
    return ", ".join(
        f"{prefix}{k}: {v}" for k, v in sorted(counter.items(), key=lambda kv: str(kv[0]))
    )


def tally_lines(t: Tally) -> list[str]:
    lines = [
        f"status: {_counts(dict(t.by_status))}",
        f"tiers: {_counts(dict(t.by_tier), 'tier ')}" if t.by_tier else "tiers: none",
    ]
    if t.by_backend:
        lines.append(f"backends: {_counts(dict(t.by_backend))}")
    u = t.usage
    lines.append(
        f"tokens: {u.input_tokens:,} in, {u.output_tokens:,} out ({u.cached_tokens:,} cached)"
    )
    cost = f"cost: ${t.cost_usd:,.6f}"
    if t.unpriced:
        cost += f" (+ {t.unpriced} job(s) with NO KNOWN PRICE: not counted, see the ledger)"
    lines.append(cost)
    if t.fallbacks:
        lines.append(f"fallbacks: {t.fallbacks} job(s) moved to the next backend of their route")
    if t.failed_checks or t.escalated:
        lines.append(escalation_line(t))
    return lines


def escalation_line(t: Tally) -> str:
    """Escalation rates: a high rate is the signal to retune tiering (docs/escalation.md)."""
    per_tier = ", ".join(
        f"tier {tier} {t.escalated[tier]}/{t.by_tier[tier]} ({t.escalated[tier] / t.by_tier[tier]:.0%})"
        for tier in sorted(t.escalated)
        if t.by_tier[tier]
    )
    per_backend = ", ".join(
        f"{b} {t.failed_checks[b]}/{t.answers[b]} ({t.failed_checks[b] / t.answers[b]:.0%})"
        for b in sorted(t.failed_checks)
    )
    return f"escalations: {per_tier or 'none'}; answers failing checks: {per_backend or 'none'}"


def print_summary(summary: RunSummary, *, quiet: bool) -> None:
    """The run summary on stderr: several lines on a terminal, else one; with --quiet only
    when something failed."""
    from .progress import summary_line

    t = summary.tally
    if quiet and t.failed == 0:
        return
    if quiet or not err_console.is_terminal:  # cron mail, logs: one line
        err_console.print(summary_line(summary), markup=False)
        return
    head = f"tierline: {t.jobs} job(s) in {summary.seconds:.1f}s, {t.failed} failed"
    if summary.run_id:
        head += f" (run {summary.run_id})"
    err_console.print(head, markup=False)
    for line in tally_lines(t):
        err_console.print("  " + line, markup=False)
    for note in summary.notes:
        err_console.print(f"  note: {note}", markup=False)
    if t.failed:
        if (top := t.top_error()) is not None:
            err_console.print(f"  most common error, {top}", markup=False)
        err_console.print(
            "  failed jobs have status != \"ok\" and an 'error' in the results", markup=False
        )


def data_console() -> Console:
    """stdout for tables people read (`plan`, `ledger`): full width even in a pipe or a file."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def print_table(table: Table, console: Console | None = None) -> None:
    """A table people read (`ledger summary`, `plan`, `backends check`): a rich table on a
    terminal; in a pipe or a file, TSV with a header row, one line per row, so that
    `sort`, `cut -f` and `awk -F'\\t'` work and nothing wraps into 80-column boxes."""
    console = console or data_console()
    if console.is_terminal:
        console.print(table)
        return
    lines = [f"# {_plain(table.title)}"] if table.title else []
    cells = zip(*(column.cells for column in table.columns), strict=True)
    for row in [[column.header for column in table.columns], *cells]:
        lines.append("\t".join(_plain(cell) for cell in row))
    # Straight to the file: Console.print would expand the tabs to spaces.
    console.file.write("\n".join(lines) + "\n")
    console.file.flush()


def _plain(cell: object) -> str:
    """A cell as one TSV field: its text without markup, tabs and newlines as spaces."""
    from rich.text import Text

    text = cell.plain if isinstance(cell, Text) else str(cell)
    return " ".join(text.replace("\t", " ").splitlines())


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader is gone, so that Python's own flush at exit
    does not print a BrokenPipeError (the recipe in the Python docs on SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
