"""A whole run over files: open the ledger run, read the inputs, dispatch, write each result,
close the ledger run with its counts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from ..config import CacheConfig, Config
from ..dispatch.answers import Answers
from ..dispatch.batch.divert import BatchOptions, open_diverter
from ..interrupts import Stop
from ..jobs import InvalidLine, Job, Result, read_jobs
from ..ledger.budget import Budget
from ..ledger.pricing import genai_prices_version
from ..ledger.store import Ledger
from ..tiering.pipeline import Tierer
from .loop import Sink, run_jobs
from .tally import RunSummary, Tally

__all__ = ["ResultSink", "finish_run", "run_files", "start_run"]


class ResultSink(Protocol):
    """Where result lines go: `resume.Journal` (or any object with this `write`)."""

    def write(self, result: Result) -> None: ...


def _answers(config: Config, cache_path: str | None, *, batches: bool) -> Answers | None:
    """Dedup (not with provider batches: an answer there comes hours later, from another
    process) and the answer cache, when `[cache]` or --cache turns it on."""
    from ..dispatch.answers import AnswerCache

    cache = None
    if cache_path is not None or config.cache is not None:
        cache = AnswerCache.from_config(config.cache or CacheConfig(), cache_path)
    answers = Answers(config, cache, dedup=not batches)
    return answers if answers.active else None


def start_run(
    ledger: Ledger,
    config: Config,
    writer: ResultSink,
    *,
    command: str,
    inputs: list[str],
    max_cost_micros: int | None,
) -> str:
    """The run's row in the ledger; a resume journal then syncs the ledger before itself, so a
    result on disk always has its calls on disk (write-ahead, docs/reliability.md)."""
    run_id = ledger.start_run(
        command=command,
        config_origin=config.origin,
        inputs=inputs,
        baseline_model=config.baseline.model,
        max_cost_micros=max_cost_micros,
        price_version=genai_prices_version(),
    )
    if hasattr(writer, "before_sync"):  # resume.Journal
        setattr(writer, "before_sync", ledger.sync)  # noqa: B010 - not in ResultSink
    return run_id


def _abandon(ledger: Ledger, run_id: str, tally: Tally, exc: BaseException) -> None:
    """Close the run's row of a run that ends on an exception (a full disk, a closed pipe, a
    bug: the CLI's exit 74, 141 or 70) as `aborted` (or `interrupted`, for Ctrl-C reaching a
    library caller), with the results written so far and the cost of every call recorded, so
    the ledger does not show it `running` for ever. Best effort: when the ledger is what
    failed (its disk is full), the original error is the one to report."""
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "aborted"
    with contextlib.suppress(Exception):  # the run's own exception is re-raised by the caller
        finish_run(ledger, run_id, tally, status)


def finish_run(ledger: Ledger, run_id: str, tally: Tally, status: str) -> None:
    """Close the run's row in the ledger with the tally's counts (start_run's other half)."""
    ledger.finish_run(
        run_id,
        jobs=tally.jobs,
        ok=tally.by_status["ok"],
        failed=tally.failed,
        status=status,
        skipped_budget=tally.by_status["skipped_budget"],
        deduped=tally.deduped,
        cached=tally.cached,
    )


async def run_files(
    inputs: list[str],
    *,
    config: Config,
    writer: ResultSink,
    ledger_path: Path,
    command: str = "run",
    on_result: Sink | None = None,
    select: Callable[[Iterable[Job | InvalidLine]], Iterable[Job | InvalidLine]] | None = None,
    stop: Stop | None = None,
    max_cost_micros: int | None = None,
    batches: BatchOptions | None = None,
    cache_path: str | None = None,
) -> RunSummary:
    """A whole run: read the inputs, dispatch, write results, and keep the ledger.

    `select` filters the input stream (shards, jobs already done on resume); `stop` makes the
    run stoppable by signals (see `run_jobs`).
    """
    with Ledger(ledger_path) as ledger:
        run_id = start_run(
            ledger, config, writer, command=command, inputs=inputs, max_cost_micros=max_cost_micros
        )

        def sink(result: Result) -> None:
            writer.write(result)
            if on_result is not None:
                on_result(result)

        divert = open_diverter(batches, config=config, ledger=ledger, run_id=run_id, inputs=inputs)
        items: Iterable[Job | InvalidLine] = read_jobs(inputs)
        answers = _answers(config, cache_path, batches=divert is not None)
        counted = Tally()
        try:
            summary = await run_jobs(
                select(items) if select is not None else items,
                config=config,
                tierer=Tierer.from_config(config.tiering),
                sink=sink,
                ledger=ledger,
                run_id=run_id,
                read_in_thread="-" in inputs,
                stop=stop,
                budget=None if max_cost_micros is None else Budget(max_cost_micros),
                divert=divert,
                answers=answers,
                tally=counted,
            )
        except BaseException as exc:
            _abandon(ledger, run_id, counted, exc)
            raise
        finally:
            if answers is not None and answers.cache is not None:
                answers.cache.close()
        t = summary.tally
        if divert is not None:
            divert.close(t.by_status["ok"], t.failed)
            summary.notes += divert.notes
        status = "pending" if t.by_status["pending"] else ("ok" if t.failed == 0 else "failed")
        if stop is not None and stop.requested:
            status = "interrupted"
        finish_run(ledger, run_id, t, status)
        if hasattr(writer, "before_sync"):
            setattr(writer, "before_sync", None)  # noqa: B010 - closing the ledger syncs it
    return summary
