"""Orchestration: read -> tier (in batches, off the event loop) -> dispatch -> escalate -> write.

The stable entry points, for the CLI and for other engines (`--engine ray` runs one
`dispatch_chunk` per actor):

* `run_files(inputs, config=, writer=, ledger_path=, ...) -> RunSummary`: a whole run over
  JSONL files, with the ledger run opened and closed (what `tierline run` calls).
* `run_jobs(items, config=, sink=, tierer=, ledger=, run_id=, budget=, ...) -> RunSummary`:
  tier and dispatch an iterable of jobs in the running event loop; `sink` gets each `Result`.
* `dispatch_chunk(jobs, config, ledger=, run_id=, budget=, ...)`: the same as an async
  iterator of `Result`s, for a caller that collects them itself.
* `Tally` sums results (`Tally.add`); `RunSummary` carries it with the run's notes and exit code.

Results are `tierline.jobs.Result` objects: `Result.to_dict()` is the result line.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .files import ResultSink, run_files
    from .loop import TIER_CHUNK, Sink, dispatch_chunk, run_jobs
    from .tally import RunSummary, Tally

__all__ = [
    "TIER_CHUNK",
    "ResultSink",
    "RunSummary",
    "Sink",
    "Tally",
    "dispatch_chunk",
    "run_files",
    "run_jobs",
]

# Where each public name lives. Imported on first use: `tierline classify` (tierline.run.classify)
# must not pay for asyncio, the SDK adapters and the ledger that the run loop imports.
_HOMES = {
    "TIER_CHUNK": "loop",
    "ResultSink": "files",
    "RunSummary": "tally",
    "Sink": "loop",
    "Tally": "tally",
    "dispatch_chunk": "loop",
    "run_files": "files",
    "run_jobs": "loop",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{home}", __name__), name)
