"""Provider batch APIs (OpenAI Batch, Anthropic Message Batches): half price, done within 24 h.

    packing.py    requests -> batches within the providers' count and size limits
    providers.py  the two batch APIs behind one interface, through the official SDKs
    engine.py     submit, poll, collect by custom_id, resubmit; the state machine
    divert.py     the run's side: batch-mode jobs leave the synchronous path
    (this file)   what the CLI calls: collect, status, cancel, and "the same command again"

docs/batches.md is the user's guide.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import Config
from ...errors import BackendError, UsageError
from ...jobs import Result, dumps, loads
from ...ledger.batches import BatchRow, Submission, SubmissionStore
from ...ledger.store import Ledger
from .divert import BatchDiverter, BatchOptions, inputs_key, open_diverter
from .engine import BatchEngine, CollectReport, Emit, PollPolicy, Progress
from .packing import ANTHROPIC_LIMITS, OPENAI_LIMITS, Limits

__all__ = [
    "ANTHROPIC_LIMITS",
    "OPENAI_LIMITS",
    "BatchDiverter",
    "BatchOptions",
    "BatchStatus",
    "CollectReport",
    "Limits",
    "PollPolicy",
    "Progress",
    "batch_status",
    "cancel_batches",
    "collect",
    "collect_same_command",
    "open_diverter",
    "rewrite_output",
    "supersede",
]


async def collect(
    config: Config,
    ledger_path: Path,
    run_ids: Sequence[str] | None = None,
    *,
    wait: bool = False,
    resubmit: bool = False,
    poll: PollPolicy | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    stdout: Emit | None = None,
    limits: dict[str, Limits] | None = None,
) -> CollectReport:
    """Collect the open submissions (or those of `run_ids`) into the results they came from.

    A results file has each job's line replaced in place (pending -> final; pending again when
    resubmitted); a run that wrote to stdout gets its newly final lines through `stdout`.
    """
    from ...resume import RunLock

    with Ledger(ledger_path) as ledger:
        engine = BatchEngine(config, ledger, limits=limits)
        store = engine.store
        wanted = [store.submission(r) for r in run_ids] if run_ids else store.submissions()
        report = CollectReport()
        try:
            for submission in wanted:
                if submission is None:
                    raise UsageError(f"no provider batches in {ledger_path} for that run id")
                to_file = submission.output != "-"
                with RunLock(submission.output if to_file else None):
                    part = await engine.collect(
                        [submission.run_id],
                        wait=wait,
                        resubmit=resubmit,
                        poll=poll,
                        on_progress=on_progress,
                        emit=None if to_file else stdout,
                    )
                    if to_file:
                        rewrite_output(submission.output, store, submission.run_id)
                _merge(report, part)
        finally:
            await engine.aclose()
    return report


def _merge(total: CollectReport, part: CollectReport) -> None:
    total.runs += part.runs
    total.ok += part.ok
    total.failed += part.failed
    total.pending += part.pending
    total.collected += part.collected
    total.resubmitted += part.resubmitted
    total.notes += part.notes


async def collect_same_command(
    config: Config,
    ledger_path: Path,
    inputs: Sequence[str],
    output: str | None,
    *,
    wait: bool = False,
    fresh: bool = False,
    poll: PollPolicy | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> CollectReport | None:
    """`run` again with batches still open for its output: collect them instead of running.

    None when there is nothing to collect, or when the results file is missing (an interrupted
    run: the run resumes from its partial file, then collects). Refuses (exit 2) when the inputs
    changed since the submission, since a fresh run would overwrite the pending lines.

    When the same command's batches were all collected already, the results file is complete:
    the report of that run is returned and nothing is sent (a cron entry that keeps running the
    documented command must not pay for the jobs again). `fresh` runs them again instead.
    """
    mine, finished = _for_output(ledger_path, inputs, output, config.origin, fresh=fresh)
    if finished is not None:
        return _finished_report(config, ledger_path, finished, output or "")
    if not mine:
        return None
    return await collect(
        config,
        ledger_path,
        mine,
        wait=wait,
        resubmit=True,
        poll=poll,
        on_progress=on_progress,
    )


def _for_output(
    ledger_path: Path, inputs: Sequence[str], output: str | None, origin: str, *, fresh: bool
) -> tuple[list[str], str | None]:
    """(run ids of the open submissions that wrote to `output` from these same inputs, the run
    whose collected results `output` already holds from these same inputs and config, or
    None)."""
    if output in (None, "-") or not ledger_path.exists():
        return [], None
    path = os.path.abspath(output)
    if not os.path.exists(path):
        return [], None
    with Ledger(ledger_path) as ledger:
        store = ledger.batches
        everything = [s for s in store.submissions(open_only=False) if s.output == path]
        mine = _same_command(store, [s for s in everything if s.state == "open"], inputs, output)
        if mine or fresh or os.path.exists(f"{path}.partial"):  # a partial file: resume it
            return mine, None
        key = inputs_key(inputs)
        done = [
            s
            for s in everything
            if s.state == "done" and key and s.inputs_key == key and _origin(ledger, s) == origin
        ]
        return [], max(done, key=lambda s: s.created_at).run_id if done else None


def _origin(ledger: Ledger, submission: Submission) -> str | None:
    """The config the submitting run used (a path, or "embedded default")."""
    run = ledger.run(submission.run_id)
    return None if run is None else run.config_origin


def _finished_report(config: Config, ledger_path: Path, run_id: str, output: str) -> CollectReport:
    with Ledger(ledger_path) as ledger:
        report = BatchEngine(config, ledger).report(run_id)
    report.notes.append(
        f"{output} already holds the collected results of run {run_id} for this input; "
        "nothing was sent (--fresh runs the jobs again)"
    )
    return report


def supersede(ledger_path: Path, output: str, run_id: str) -> None:
    """A run has just written `output`: earlier submissions no longer own its lines, so "the
    same command again" must not take the file for theirs."""
    with Ledger(ledger_path) as ledger:
        store = ledger.batches
        for s in store.submissions(open_only=False):
            if s.output == output and s.run_id != run_id and s.state != "replaced":
                store.set_submission_state(s.run_id, "replaced")


def _same_command(
    store: SubmissionStore, mine: list[Submission], inputs: Sequence[str], output: str
) -> list[str]:
    key = inputs_key(inputs)
    same = [s for s in mine if key is not None and s.inputs_key == key]
    # Other input: only jobs still waiting at a provider stand in the way (a fresh run would
    # lose their lines); what merely could be resubmitted gives way to the new run.
    changed = [s for s in mine if s not in same and store.states(s.run_id).get("pending")]
    if changed:
        raise UsageError(
            f"{output} has provider batches still pending from run {changed[0].run_id} on other "
            f"input; run `tierline batch collect {changed[0].run_id}` first, or write to "
            "another -o"
        )
    for s in mine:
        if s not in same:  # superseded by the new run: its file is no longer theirs
            store.set_submission_state(s.run_id, "replaced")
    return [s.run_id for s in same]


def rewrite_output(path: str, store: SubmissionStore, run_id: str) -> None:
    """Replace each batch job's line in a results file by its current one, atomically.

    Lines are matched on (source, line), the job's place in the input, never on position in the
    file. A job whose line is missing (the file was cut short) is appended, so the file keeps
    exactly one line per job. Fields the run added (the resume `key`) are kept.
    """
    current = {
        (s["source"], s["line"]): _current(batch_id, s, r)
        for batch_id, s, r in store.current(run_id)
    }
    tmp = f"{path}.collect"
    with open(tmp, "wb") as out:
        for raw in _lines(path):
            record = _record(raw)
            place = (record.get("source"), record.get("line")) if record else None
            if record and place in current and record.get("status") != "invalid":
                new = current.pop(place)
                if "key" in record:
                    new["key"] = record["key"]
                out.write(dumps(new) + b"\n")
            else:
                out.write(raw)
        for new in current.values():
            out.write(dumps(new) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _current(batch_id: str, stub: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    from .engine import render_pending

    if result is not None:
        return result
    return render_pending(Result.from_record(stub), batch_id or None).to_dict()


def _lines(path: str) -> Iterator[bytes]:
    if not os.path.exists(path):
        return
    with open(path, "rb") as fh:
        for raw in fh:
            yield raw if raw.endswith(b"\n") else raw + b"\n"


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _exists(path: Path) -> bool:
    return path.exists()  # a status or cancel with no ledger yet has nothing to show


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """One provider batch for `tierline batch status`."""

    batch: BatchRow
    submission: Submission | None
    live: bool  # the status was just asked of the provider (else: as last seen)
    note: str | None = None


async def batch_status(
    config: Config, ledger_path: Path, *, everything: bool = False, refresh: bool = True
) -> list[BatchStatus]:
    """Every uncollected batch (or every batch), asking the provider when it can."""
    if not _exists(ledger_path):
        return []
    with Ledger(ledger_path) as ledger:
        engine = BatchEngine(config, ledger)
        store = engine.store
        out = []
        try:
            for row in store.batches(uncollected=not everything):
                note, live = None, False
                if refresh and row.collected_at is None and row.batch_id:
                    try:
                        await engine.refresh(row)
                        live = True
                    except BackendError as exc:
                        note = str(exc)
                fresh = next(b for b in store.batches(row.run_id) if b.id == row.id)
                out.append(BatchStatus(fresh, store.submission(row.run_id), live, note))
        finally:
            await engine.aclose()
    return out


async def cancel_batches(config: Config, ledger_path: Path, run_ids: Sequence[str]) -> int:
    """Ask the provider to cancel the open batches of the runs (all open ones when none given);
    their finished part is kept and comes back with `collect`."""
    if not _exists(ledger_path):
        return 0
    with Ledger(ledger_path) as ledger:
        engine = BatchEngine(config, ledger)
        count = 0
        try:
            for row in engine.store.batches(uncollected=True):
                if row.batch_id and (not run_ids or row.run_id in run_ids):
                    await engine.provider(row.backend).cancel(row.batch_id)
                    count += 1
        finally:
            await engine.aclose()
    return count
