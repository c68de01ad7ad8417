"""Bookkeeping shared by the two stateful batch fakes (OpenAI Batch, Anthropic Message Batches).

Time never passes on its own: a test moves batches on with ``advance_batches()``,
``complete_batch(id)``, ``progress_batch(id, fraction)`` or ``expire_batch(id, done_fraction)``,
or sets ``auto_advance=True`` so that every retrieve moves that batch one step.
Lines are processed in a seeded random order, so a partial batch finishes a random subset.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tests.fakes._content import Reply
from tests.fakes._core import Fault, dumps, loads

JSON = Any
T = TypeVar("T")


@dataclass
class BatchLine:
    """One request of a batch and, once processed, its HTTP status and response body."""

    custom_id: str
    body: Mapping[str, JSON]
    status: int | None = None
    response: JSON = None
    url: str = "/v1/chat/completions"  # the batch's endpoint (OpenAI): which API answers


@dataclass
class BatchJob:
    """A batch's lines and progress; ``obj`` is the provider-shaped object served to clients."""

    id: str
    obj: dict[str, JSON]
    lines: list[BatchLine] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    done: int = 0
    extra: dict[str, JSON] = field(default_factory=dict)

    @property
    def processed(self) -> list[BatchLine]:
        return [self.lines[i] for i in self.order[: self.done]]

    @property
    def unprocessed(self) -> list[BatchLine]:
        return [self.lines[i] for i in self.order[self.done :]]


class BatchBook:
    """The batches of one fake, the per-line scripts, and a clock offset the test controls."""

    def __init__(
        self, run_line: Callable[[BatchLine, Reply | Fault | None], tuple[int, JSON]], seed: int
    ) -> None:
        self.jobs: dict[str, BatchJob] = {}
        self.scripts: dict[str, Reply | Fault] = {}
        self.rng = random.Random(seed)
        self.offset = 0.0
        self.lock = threading.RLock()
        self._run_line = run_line

    def now(self) -> float:
        return time.time() + self.offset

    def add(self, job: BatchJob, lines: Sequence[BatchLine]) -> None:
        job.lines = list(lines)
        job.order = list(range(len(job.lines)))
        self.rng.shuffle(job.order)
        self.jobs[job.id] = job

    def get(self, batch_id: str) -> BatchJob | None:
        return self.jobs.get(batch_id)

    def run_until(self, job: BatchJob, count: int) -> None:
        """Process lines until ``count`` of them are done (never undoes work)."""
        for index in job.order[job.done : count]:
            line = job.lines[index]
            line.status, line.response = self._run_line(line, self.scripts.get(line.custom_id))
        job.done = max(job.done, min(count, len(job.lines)))

    def run_fraction(self, job: BatchJob, fraction: float) -> None:
        self.run_until(job, math.floor(len(job.lines) * fraction + 1e-9))

    def page(
        self,
        items: Sequence[T],
        ident: Callable[[T], str],
        after: str | None,
        before: str | None,
        limit: int,
    ) -> tuple[list[T], bool]:
        """Cursor pagination over ``items`` (already newest first)."""
        ids = [ident(item) for item in items]
        if after is not None and after in ids:
            start = ids.index(after) + 1
            chunk = list(items[start : start + limit])
            return chunk, start + limit < len(items)
        if before is not None and before in ids:
            end = ids.index(before)
            chunk = list(items[max(end - limit, 0) : end])
            return chunk, end - limit > 0
        return list(items[:limit]), limit < len(items)


def response_body(response: Any) -> JSON:
    """The JSON body of an aiohttp ``web.Response`` built by a fake."""
    return loads(response.body)


def dumps_lines(rows: Sequence[JSON]) -> bytes:
    return b"".join(dumps(row) + b"\n" for row in rows)


def line_script(
    reply: Reply | None,
    status: int | None,
    message: str | None,
    error_type: str | None,
    code: str | int | None,
) -> Reply | Fault:
    """What a per-line script becomes: a reply, or an error ``Fault`` for ``status``."""
    if status is not None:
        return Fault(status=status, message=message, error_type=error_type, code=code)
    return reply or Reply()
