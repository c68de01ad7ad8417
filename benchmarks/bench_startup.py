"""What a shell loop pays per call: `tierline --help` and `tierline classify` of one job.

    python benchmarks/bench_startup.py            # median of 5 runs each
    python benchmarks/bench_startup.py --runs 11

Each command is a fresh process (as in `for f in *.jsonl; do tierline classify "$f"; done`),
stdout and stderr to pipes, with Python's bytecode caches written (as after `pip install`). `python -c pass` is measured in the same run as the baseline: on
a loaded machine compare the ratios, not the seconds. The import test is
tests/test_cli.py::test_startup_does_not_import_sdks; this file only times.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# As installed: Python caches compiled modules. PYTHONDONTWRITEBYTECODE (set in some dev shells
# and CI images) would recompile every tierline module on every call; the warm-up run below
# writes the caches.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_seconds(argv: list[str], runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of `runs` fresh processes; CPU time
    is less disturbed than wall time by other processes on a shared machine."""
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), _cpu()
        subprocess.run(argv, capture_output=True, check=True, env=ENV)
        wall.append(time.perf_counter() - start)
        cpu.append(_cpu() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.jsonl"
        job.write_text('{"prompt": "Summarize: the meeting moved to Tuesday."}\n')
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "tierline --help": [sys.executable, "-m", "tierline", "--help"],
            "tierline classify (1 job)": [sys.executable, "-m", "tierline", "classify", str(job)],
        }
        for argv in cases.values():  # warm: bytecode caches, the page cache
            subprocess.run(argv, capture_output=True, check=True, env=ENV)
        results = {name: median_seconds(argv, args.runs) for name, argv in cases.items()}
    base, base_cpu = results["python -c pass"]
    print(f"median of {args.runs} runs (stdout and stderr are pipes)")
    for name, (wall, cpu) in results.items():
        print(
            f"{name:28} wall {wall:6.3f} s ({wall / base:5.1f}x python -c pass)  "
            f"cpu {cpu:6.3f} s ({cpu / base_cpu:5.1f}x)"
        )


if __name__ == "__main__":
    main()
