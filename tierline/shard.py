"""`--shard I/N`: a stable hash partition of the jobs, so N hosts (or N cron entries) can split
one huge file, each writing its own results and ledger (merged with `tierline ledger merge`).

A job belongs to shard ``I`` (1-based) when ``blake2b(id, 8 bytes) as a big-endian integer
mod N == I - 1``. It depends on the job id alone: not on the line number, the host, the Python
version or the order of the file, so every host agrees without talking to the others. A line
that is not a valid job goes to the shard of its id when one can be read from it, else of
``FILE:LINE`` (the id a job without one gets), so each error result is written exactly once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import UsageError
from .jobs import InvalidLine, Job

__all__ = ["Shard", "shard_of"]


def shard_of(job_id: str, count: int) -> int:
    """The 0-based shard of a job id among `count` shards."""
    digest = hashlib.blake2b(job_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    index: int  # 1-based, as written on the command line
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise UsageError(f"--shard {text!r}: expected I/N, e.g. --shard 2/4")
        index, count = int(match[1]), int(match[2])
        if not 1 <= index <= count:
            raise UsageError(f"--shard {text!r}: I must be between 1 and N")
        return cls(index, count)

    def owns(self, item: Job | InvalidLine) -> bool:
        job_id = item.id or f"{os.path.basename(item.source)}:{item.line}"
        return shard_of(job_id, self.count) == self.index - 1

    def select(self, items: Iterable[Job | InvalidLine]) -> Iterator[Job | InvalidLine]:
        return (item for item in items if self.owns(item))
