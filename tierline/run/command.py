"""`tierline run` behind the command line: collect this command's open provider batches, or
lock the output, resume from its partial file, run, commit the results, hand the output to this
run's provider batches and, with --wait, wait for them.

The command parses and checks its options, calls `run_command` once and renders what comes
back (through a `View` for what is shown while it works); everything that decides what is sent
and written is here.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..config import Config
from ..dispatch.batch import BatchOptions, CollectReport, collect_same_command, supersede
from ..dispatch.batch import Progress as BatchProgress
from ..errors import ExitCode
from ..interrupts import Stop
from ..jobs import InvalidLine, Job
from ..resume import Journal, RunLock
from ..shard import Shard
from .files import run_files
from .loop import Sink
from .tally import RunSummary

__all__ = [
    "CommandOutcome",
    "Engine",
    "Progress",
    "RunRequest",
    "RunToOutput",
    "View",
    "local_engine",
    "run_command",
    "run_to_output",
]

# Given the journal (its `kept` count grows as the input is read), a context that yields the
# per-result callback: the CLI's progress bar, or nothing.
Progress = Callable[[Journal], AbstractContextManager[Sink]]


class View(Protocol):
    """What the command shows while it works (the CLI: stderr), in the order it happens."""

    def waiting(self) -> AbstractContextManager[Callable[[BatchProgress], None] | None]:
        """Around a collection of provider batches: a callback for their progress, or None."""
        ...

    def collected(self, report: CollectReport) -> None:
        """A collection of this command's provider batches ended."""
        ...

    def finished(self, summary: RunSummary) -> None:
        """The run committed its output (before --wait waits for its provider batches)."""
        ...


class Engine(Protocol):
    """Runs the selected jobs into the journal and returns the summary: this process's event
    loop (the default), or another engine with the same contract (`tierline.ray.engine`)."""

    def __call__(
        self,
        request: RunRequest,
        *,
        writer: Journal,
        on_result: Sink,
        select: Select,
        stop: Stop,
    ) -> RunSummary: ...


Select = Callable[[Iterable[Job | InvalidLine]], Iterable[Job | InvalidLine]]


def local_engine(
    request: RunRequest, *, writer: Journal, on_result: Sink, select: Select, stop: Stop
) -> RunSummary:
    """The run on this process's event loop (`run_files`)."""
    work = run_files(
        request.inputs,
        config=request.config,
        writer=writer,
        ledger_path=request.ledger_path,
        on_result=on_result,
        select=select,
        stop=stop,
        batches=request.batches,
        max_cost_micros=request.max_cost_micros,
        cache_path=request.cache_path,
    )
    return asyncio.run(stop.guard(work))


@dataclass(frozen=True)
class RunRequest:
    """One `tierline run`, its options checked (cli/preflight.py) and resolved."""

    inputs: list[str]
    output: str | None  # the results file (symlinks resolved), None for stdout
    config: Config
    ledger_path: Path
    shard: Shard | None = None
    fresh: bool = False  # ignore the partial file of an interrupted attempt
    retry_failed: bool = False  # send again the jobs of `output` that are not ok
    batches: BatchOptions = field(default_factory=BatchOptions)
    max_cost_micros: int | None = None
    cache_path: str | None = None
    # called with `output` once it is committed, under its lock: `-o URI` writes its parts
    # from this local file (tierline/ray/outputs.py)
    publish: Callable[[str], object] | None = None


@dataclass
class RunToOutput:
    """What a run did to its output, for the command to report."""

    journal: Journal  # counts: written, kept from the last attempt, write error
    stop: Stop
    summary: RunSummary | None = None  # None when the run never finished its loop
    stale: int = 0  # kept results dropped because their job left the input
    committed: bool = False  # the output file is in place (False: interrupted or unwritable)

    @property
    def exit_code(self) -> ExitCode:
        """The run's own code, or 1 when it succeeded but kept failed results of the last try."""
        if self.journal.error is not None:
            broken = self.journal.error.errno in (errno.EPIPE, errno.ECONNRESET)
            return ExitCode.BROKEN_PIPE if broken else ExitCode.OUTPUT_FAILED
        if self.stop.exit_code is not None:
            return self.stop.exit_code
        assert self.summary is not None
        code = self.summary.exit_code
        return ExitCode.JOBS_FAILED if code == 0 and self.journal.kept_failed else code


@dataclass
class CommandOutcome:
    """What `run_command` did: the exit code, and the run (None: the command collected its open
    provider batches instead of running)."""

    exit_code: int
    run: RunToOutput | None = None


def run_command(
    request: RunRequest,
    stop: Stop,
    progress: Progress,
    view: View,
    engine: Engine = local_engine,
) -> CommandOutcome:
    """`tierline run`: the same command again while its provider batches are open collects them
    instead of running; else run into the output and, with --wait, wait for the batches the run
    sent and fill in their 'pending' lines."""
    report = _collect(request, view, wait=request.batches.wait, fresh=request.fresh)
    if report is not None:
        return CommandOutcome(int(report.exit_code))
    done = run_to_output(request, stop, progress, engine)
    if not done.committed:  # interrupted, or the results could not be written
        return CommandOutcome(int(done.exit_code), done)
    summary = done.summary
    assert summary is not None
    view.finished(summary)
    if request.batches.wait and request.output is not None and summary.tally.by_status["pending"]:
        # the run wrote 'pending' lines and committed the file; now wait and fill them in
        waited = _collect(request, view, wait=True, fresh=False)
        code = summary.exit_code if waited is None else waited.exit_code
        return CommandOutcome(int(code), done)
    return CommandOutcome(int(done.exit_code), done)


def _collect(request: RunRequest, view: View, *, wait: bool, fresh: bool) -> CollectReport | None:
    """This command's provider batches, collected (None: it has none open)."""
    with view.waiting() as show:
        report = asyncio.run(
            collect_same_command(
                request.config,
                request.ledger_path,
                request.inputs,
                request.output,
                wait=wait,
                fresh=fresh,
                on_progress=show,
            )
        )
    if report is not None:
        view.collected(report)
    return report


def run_to_output(
    request: RunRequest, stop: Stop, progress: Progress, engine: Engine = local_engine
) -> RunToOutput:
    """Run the jobs into the output under its lock; commit it unless the run was stopped or
    the output failed (then its `.partial` file stays for a resume)."""

    def output_failed(exc: OSError) -> None:
        broken = exc.errno in (errno.EPIPE, errno.ECONNRESET)
        stop.halt(ExitCode.BROKEN_PIPE if broken else ExitCode.OUTPUT_FAILED)

    part, output = request.shard, request.output
    with (
        RunLock(output),
        Journal(
            output,
            request.config,
            resume=not request.fresh,
            retry_failed=request.retry_failed,
            on_error=output_failed,
        ) as journal,
    ):
        done = RunToOutput(journal, stop)
        with progress(journal) as advance:
            done.summary = summary = engine(
                request,
                writer=journal,
                on_result=advance,
                select=lambda items: journal.select(part.select(items) if part else items),
                stop=stop,
            )
        if journal.error is not None or stop.exit_code is not None:
            return done
        done.stale = journal.commit()
        if request.publish is not None and output is not None:
            request.publish(output)
        done.committed = True
    if output is not None and summary.run_id:
        # older provider batches no longer own this file's lines
        supersede(request.ledger_path, output, summary.run_id)
    summary.notes += _resume_notes(journal, done.stale)
    return done


def _resume_notes(journal: Journal, stale: int) -> list[str]:
    notes = []
    if journal.retry_failed:
        notes.append(
            f"retry-failed: kept {journal.kept} result(s); dropped {journal.retried} not ok, "
            "sent those and any missing again"
        )
    elif journal.kept:
        notes.append(
            f"resumed: kept {journal.kept} result(s) of an interrupted attempt "
            f"({journal.kept_failed} not ok); only the rest was dispatched"
        )
    if stale:
        notes.append(f"dropped {stale} saved result(s) whose job is no longer in the input")
    return notes
