"""What recording a call in the ledger costs, by commit policy (docs/costs.md).

    python benchmarks/bench_ledger.py [CALLS] [DIR]

* a commit per call;
* 256 rows per commit (the batch size outside a run);
* a run's write-ahead: CONCURRENCY jobs finishing together, each recording its call and
  awaiting `Ledger.durable()` before its result is written (group commit).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tierline.jobs import Usage
from tierline.ledger.store import CallRecord, Ledger

CONCURRENCY = 64
CALL = CallRecord("j", 1, "b", "m", "ok", Usage(10, 10), 12_000, "config", 0.1, endpoint="http://x")


def per_call(path: Path, calls: int, flush_every: int) -> float:
    with Ledger(path, flush_every=flush_every) as ledger:
        run = ledger.start_run(command="bench", config_origin="-", inputs=["-"])
        started = time.perf_counter()
        for _ in range(calls):
            ledger.record_call(run, CALL)
        ledger.flush()
        return (time.perf_counter() - started) / calls


async def group_commit(path: Path, calls: int) -> tuple[float, int]:
    with Ledger(path) as ledger:
        run = ledger.start_run(command="bench", config_origin="-", inputs=["-"])
        commits = 0
        flush = ledger.flush

        def counted() -> None:
            nonlocal commits
            commits += bool(ledger._buffer)
            flush()

        ledger.flush = counted  # type: ignore[method-assign]
        slots = asyncio.Semaphore(CONCURRENCY)

        async def job() -> None:
            async with slots:
                await asyncio.sleep(0.001)  # the call itself
                ledger.record_call(run, CALL)
                await ledger.durable()

        started = time.perf_counter()
        await asyncio.gather(*(job() for _ in range(calls)))
        return (time.perf_counter() - started) / calls, commits


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    directory = sys.argv[2] if len(sys.argv) > 2 else None
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        one = per_call(Path(tmp) / "one.db", calls, 1)
        batched = per_call(Path(tmp) / "batched.db", calls, 256)
        group, commits = asyncio.run(group_commit(Path(tmp) / "group.db", calls))
    print(f"{calls} calls")
    print(f"commit per call:      {one * 1e6:8.1f} us/call")
    print(f"256 rows per commit:  {batched * 1e6:8.1f} us/call")
    print(
        f"write-ahead, {CONCURRENCY} jobs in flight: {commits} commits "
        f"({calls / max(commits, 1):.0f} calls each), {group * 1e6:.1f} us/call wall incl. the 1 ms call"
    )


if __name__ == "__main__":
    main()
