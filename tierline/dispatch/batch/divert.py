"""The run's side of provider batches: jobs whose route starts at a batch-mode backend are packed
into batches instead of being sent one by one.

Each job still gets exactly one line in the results: `pending` (with its batch id) as soon as its
batch is submitted, replaced by the final result when the batch is collected. With `--wait` on
stdout, where lines cannot be taken back, the final results are written instead, once collected.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ...config import Config
from ...errors import BackendUnavailable
from ...jobs import Job, Result, Tiered
from ...ledger.store import Ledger
from ..base import request_for
from .engine import BatchEngine, Pending, PollPolicy, Progress
from .packing import Limits, Packer

__all__ = ["BatchDiverter", "BatchOptions", "batch_backends", "inputs_key", "open_diverter"]

ResultSink = Callable[[Result], None]


@dataclass(frozen=True)
class BatchOptions:
    """How a run uses provider batches (`run --provider-batch --wait`)."""

    provider_batch: bool = False  # every backend whose kind has a batch API, in batch mode
    wait: bool = False
    output: str | None = None  # the results file, None for stdout
    poll: PollPolicy = field(default_factory=PollPolicy)
    on_progress: Callable[[Progress], None] | None = None
    limits: Mapping[str, Limits] | None = None  # by backend name; tests pack small batches


def batch_backends(config: Config, provider_batch: bool) -> set[str]:
    """The backends whose jobs go to provider batches."""
    return {
        name
        for name, b in config.backends.items()
        if b.entry.batch is not None and (provider_batch or getattr(b, "mode", "") == "batch")
    }


def inputs_key(inputs: Sequence[str]) -> str | None:
    """What the inputs were when they were read: path, size and mtime of each (None with stdin),
    so that "the same command" can be told from a run on new input."""
    parts = []
    for path in inputs:
        if path == "-":
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        parts.append(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


class BatchDiverter:
    """Takes the jobs of batch-mode backends during a run and submits them in packed batches."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        run_id: str,
        backends: set[str],
        *,
        inputs: Sequence[str],
        options: BatchOptions,
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.backends = backends
        self.options = options
        self.inputs = list(inputs)
        self.engine = BatchEngine(config, ledger, limits=options.limits)
        self.unavailable: dict[str, str] = {}
        self._packers: dict[str, Packer[Pending]] = {}
        self._used: dict[str, set[str]] = {}
        self._opened = False
        self._emitted: Counter[str] = Counter()  # final batch results emitted (inline wait)
        self._emit: ResultSink = lambda _result: None
        self.notes: list[str] = []

    def bind(self, emit: ResultSink) -> None:
        """Where this diverter's result lines go: the run's own sink (tally, then writer)."""
        self._emit = emit

    @property
    def inline(self) -> bool:
        """Final results go out through the run itself: `--wait` on stdout."""
        return self.options.wait and self.options.output is None

    async def offer(self, job: Job, vote: Tiered) -> bool:
        """Take the job if its tier's route starts at a batch-mode backend that can serve."""
        name = self.config.route(vote.tier)[0]
        if name not in self.backends or name in self.unavailable:
            return False
        try:
            provider = self.engine.provider(name)
        except BackendUnavailable as exc:
            # No key or SDK: the job goes the synchronous way, which falls back along the route
            # and says why in its result.
            self.unavailable[name] = str(exc)
            return False
        self._open()
        backend = self.config.backends[name]
        body = provider.encode(request_for(job, self.config, name))
        custom_id = provider.custom_id(job.id, self._used.setdefault(name, set()))
        stub = Result.pending(job, vote, name, backend.display_model)
        packer = self._packers.setdefault(name, Packer(provider.limits, provider.overhead))
        closed = packer.add(
            Pending(custom_id, job.id, stub, body), len(provider.line(custom_id, body))
        )
        if closed is not None:
            await self._send(name, closed.items, closed.size)
        return True

    def _open(self) -> None:
        if not self._opened:
            self.engine.store.open_submission(
                self.run_id,
                output=os.path.abspath(self.options.output) if self.options.output else "-",
                inputs="\n".join(self.inputs),
                inputs_key=inputs_key(self.inputs),
            )
            self._opened = True

    async def _send(self, name: str, items: list[Pending], size: int) -> None:
        _, lines = await self.engine.submit(self.run_id, name, items, size)
        for line in lines:
            if line.status != "pending" or not self.inline:
                self._count(line)
                self._emit(line)

    def _count(self, line: Result) -> None:
        if line.status != "pending":
            self._emitted[line.status] += 1

    async def finish(self) -> None:
        """Submit the last, partly filled batches; on `--wait` to stdout, wait and emit finals."""
        for name, packer in self._packers.items():
            chunk = packer.flush()
            if chunk is not None:
                await self._send(name, chunk.items, chunk.size)
        if self.inline and self._opened:

            def final(line: Result) -> None:
                if line.status != "pending":
                    self._count(line)
                    self._emit(line)

            await self.engine.collect(
                [self.run_id],
                wait=True,
                resubmit=True,
                poll=self.options.poll,
                on_progress=self.options.on_progress,
                emit=final,
            )

    def close(self, ok: int, failed: int) -> None:
        """Record the run's own (non-batch) counts, so a later collection can total the run."""
        if not self._opened:
            return
        sync_ok = ok - self._emitted["ok"]
        sync_failed = failed - sum(n for s, n in self._emitted.items() if s != "ok")
        self.engine.store.set_sync_counts(self.run_id, ok=sync_ok, failed=sync_failed)
        pending = self.engine.store.states(self.run_id).get("pending", 0)
        if pending:
            self.notes.append(
                f"{pending} job(s) wait in provider batches (status 'pending'): "
                "`tierline batch collect` or the same command again fetches them"
            )
        for name, why in sorted(self.unavailable.items()):
            self.notes.append(f"provider batches off for {name}: {why}")

    async def aclose(self) -> None:
        await self.engine.aclose()


def open_diverter(
    options: BatchOptions | None,
    *,
    config: Config,
    ledger: Ledger,
    run_id: str,
    inputs: Sequence[str],
) -> BatchDiverter | None:
    """A diverter when some backend is in batch mode, else None (the run is all synchronous)."""
    backends = batch_backends(config, bool(options and options.provider_batch))
    if not backends:
        return None
    return BatchDiverter(
        config, ledger, run_id, backends, inputs=inputs, options=options or BatchOptions()
    )
