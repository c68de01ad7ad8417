"""`tierline classify` behind the command: read, tier a chunk at a time, write each job back
with its decision, in input order. No event loop, dispatch or ledger: a shell loop pays for
this command on every call (tests/test_cli.py keeps its imports small)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Config
from ..jobs import ResultWriter, read_jobs
from ..tiering.pipeline import Tierer, classify

__all__ = ["Classified", "classify_files"]


@dataclass(frozen=True, slots=True)
class Classified:
    lines: int  # result lines written: one per input line that is not blank
    invalid: int  # of which not a valid job (each with its error)


def classify_files(inputs: Sequence[str], output: str | None, config: Config) -> Classified:
    """Tier every job of `inputs` into `output` (None: stdout), committed atomically."""
    tierer = Tierer.from_config(config.tiering)
    writer = ResultWriter(output, flush_each=False)
    invalid = 0
    try:
        for record in classify(read_jobs(inputs), tierer):
            invalid += record.get("status") == "invalid"
            writer.write(record)
        writer.commit()
    finally:
        writer.close()
    return Classified(writer.count, invalid)
