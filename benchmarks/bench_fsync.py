"""What the results journal's fsync policy costs: N result lines written through
`tierline.resume.Journal` with no fsync until the end, the default policy (every 256 results or
1 s), and an fsync after every result. docs/reliability.md quotes its output.

Usage: python benchmarks/bench_fsync.py [N] [DIR]   (DIR: a directory on the disk to measure)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tierline.config import embedded_default
from tierline.jobs import jobs_from_lines
from tierline.resume import FSYNC_EVERY, FSYNC_INTERVAL_S, Journal

POLICIES = {
    "end only": (10**9, 10.0**9),
    f"every {FSYNC_EVERY} or {FSYNC_INTERVAL_S:g}s (default)": (FSYNC_EVERY, FSYNC_INTERVAL_S),
    "every result": (1, 0.0),
}


def record(i: int) -> dict[str, object]:
    """A result about the size of a real one (~700 bytes)."""
    return {
        "id": f"j{i}",
        "line": i + 1,
        "source": "jobs.jsonl",
        "status": "ok",
        "tier": 1,
        "why": "rule: task hint 'summarize'",
        "backend": "gpu",
        "model": "Qwen/Qwen2.5-32B-Instruct",
        "output": "A short answer of a few sentences. " * 10,
        "usage": {"input_tokens": 120, "output_tokens": 60},
        "cost_usd": 0.0001,
        "route": [{"backend": "gpu", "status": "ok", "attempts": 1, "latency_s": 0.4}],
        "error": None,
    }


def main(count: int, directory: Path) -> None:
    config = embedded_default()
    lines = [f'{{"id": "j{i}", "prompt": "p"}}' for i in range(count)]
    records = [record(i) for i in range(count)]
    print(f"{count} results of ~{len(str(records[0]))} bytes in {directory}")
    for name, (every, interval) in POLICIES.items():
        out = directory / "bench.jsonl"
        started = time.perf_counter()
        with Journal(
            str(out), config, resume=False, fsync_every=every, fsync_interval_s=interval
        ) as journal:
            for item, rec in zip(journal.select(jobs_from_lines(lines)), records, strict=True):
                journal.write({**rec, "source": item.source, "line": item.line})
            journal.commit()
        seconds = time.perf_counter() - started
        print(f"  fsync {name:<32} {seconds:7.2f}s  {seconds / count * 1e6:8.1f} us/result")
        out.unlink()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory(dir=sys.argv[2] if len(sys.argv) > 2 else ".") as tmp:
        main(n, Path(tmp))
