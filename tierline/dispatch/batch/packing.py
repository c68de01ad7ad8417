"""Packing a stream of encoded requests into provider batches that respect the provider's limits.

A batch is closed as soon as the next request would pass either the request count or the byte
limit, so memory holds at most one batch. Limits are parameters, so tests can pack with small ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["ANTHROPIC_LIMITS", "OPENAI_LIMITS", "Chunk", "Limits", "Packer", "pack"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Limits:
    """The most a provider accepts in one batch."""

    max_requests: int
    max_bytes: int


# Decimal megabytes: the providers say "MB" without saying which, and the smaller reading is safe.
OPENAI_LIMITS = Limits(max_requests=50_000, max_bytes=200_000_000)  # per input file
ANTHROPIC_LIMITS = Limits(max_requests=100_000, max_bytes=256_000_000)  # per create request


@dataclass(slots=True)
class Chunk(Generic[T]):
    """One batch's worth of items, with their encoded size."""

    items: list[T] = field(default_factory=list)
    size: int = 0


class Packer(Generic[T]):
    """Fills one chunk at a time; `add` hands back the previous chunk when an item does not fit.

    `overhead` is the fixed envelope of a batch (Anthropic's JSON wrapper around the requests).
    An item larger than a whole batch gets a chunk of its own, and the provider refuses it with a
    message that names it, rather than tierline dropping it silently.
    """

    def __init__(self, limits: Limits, overhead: int = 0) -> None:
        self.limits = limits
        self.overhead = overhead
        self.chunk: Chunk[T] = Chunk(size=overhead)

    def add(self, item: T, size: int) -> Chunk[T] | None:
        chunk, closed = self.chunk, None
        full = len(chunk.items) >= self.limits.max_requests
        if chunk.items and (full or chunk.size + size > self.limits.max_bytes):
            closed, self.chunk = chunk, Chunk(size=self.overhead)
        self.chunk.items.append(item)
        self.chunk.size += size
        return closed

    def flush(self) -> Chunk[T] | None:
        """The last, partly filled chunk (None when empty)."""
        chunk, self.chunk = self.chunk, Chunk(size=self.overhead)
        return chunk if chunk.items else None


def pack(items: Iterable[tuple[T, int]], limits: Limits, overhead: int = 0) -> Iterator[Chunk[T]]:
    """Group `(item, encoded_bytes)` pairs into chunks within `limits`, in input order."""
    packer: Packer[T] = Packer(limits, overhead)
    for item, size in items:
        closed = packer.add(item, size)
        if closed is not None:
            yield closed
    last = packer.flush()
    if last is not None:
        yield last
