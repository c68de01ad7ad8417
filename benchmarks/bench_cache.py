"""Never pay twice: the answer cache and in-run dedup against the fake vLLM server.

    python benchmarks/bench_cache.py                 # 10,000 jobs
    python benchmarks/bench_cache.py --jobs 2000

Three `tierline run` processes (each its own fresh process, timed from outside, start-up
included) against one fake vLLM server (tests/fakes) on 127.0.0.1:

1. `first`: N distinct jobs with `--cache`: every job is sent, the cache is filled;
2. `second`: the same command again (new output file): the target is 0 backend calls and
   under 2 s on 2 cores;
3. `dup40`: N jobs of which 40% repeat an earlier prompt (other id, other metadata), no cache:
   the target is backend calls = unique jobs.

Backend calls are the fake's own count of chat completions it answered
(`vllm:request_success_total`), not tierline's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The fakes live under tests/ (they do not ship in the wheel): import them from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes import FakeVLLM

CONFIG = """
[backends.gpu]
kind = "openai-compatible"
flavor = "vllm"
base_url = "{url}"
model = "m"
max_concurrency = 64
[routes]
1 = ["gpu"]
2 = ["gpu"]
3 = ["gpu"]
[defaults]
temperature = 0
"""


def write_jobs(path: Path, count: int, unique: int) -> None:
    """`count` jobs over `unique` prompts, each asked at least once, in a seeded random order;
    tier given, as after `tierline classify`."""
    prompts = [i % unique for i in range(count)]
    random.Random(0).shuffle(prompts)  # repeats anywhere in the file, not in blocks
    with path.open("w", encoding="utf-8") as fh:
        for i, p in enumerate(prompts):
            job = {"id": f"j{i}", "prompt": f"Ticket {p}: the printer is jammed.",
                   "tier": 1 + p % 3, "metadata": {"n": i}}  # fmt: skip
            fh.write(json.dumps(job) + "\n")


def run(args: list[str], home: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one `tierline run` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tierline", "run", "-q", *args],
        env={**os.environ, "TIERLINE_HOME": str(home)},
        capture_output=True,
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"tierline run exited {proc.returncode}: {proc.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--dup-share", type=float, default=0.4)
    parser.add_argument("--only", choices=("cache", "dup40"), help="run only these runs")
    opts = parser.parse_args()
    n = opts.jobs
    with tempfile.TemporaryDirectory() as tmp, FakeVLLM(model="m", record_limit=16) as server:
        d = Path(tmp)
        config = d / "tierline.toml"
        config.write_text(CONFIG.format(url=server.base_url), encoding="utf-8")
        distinct, dups = d / "distinct.jsonl", d / "dup.jsonl"
        write_jobs(distinct, n, n)
        unique = round(n * (1 - opts.dup_share))
        write_jobs(dups, n, unique)
        common = ["-c", str(config), "--ledger", str(d / "ledger.db")]
        cache = ["--cache", str(d / "cache.sqlite")]

        def calls() -> int:
            return server.counters["request_success"]

        rows = []
        runs = [("first", distinct, cache), ("second", distinct, cache), ("dup40", dups, [])]
        if opts.only:
            runs = [r for r in runs if (r[0] == "dup40") == (opts.only == "dup40")]
        for name, jobs, extra in runs:
            before = calls()
            seconds, cpu = run([str(jobs), "-o", str(d / f"{name}.jsonl"), *common, *extra], d)
            rows.append((name, seconds, cpu, calls() - before))
        print(f"{n} jobs; {unique} unique in dup40; {os.cpu_count()} CPUs; "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(f"{'run':8} {'wall s':>8} {'CPU s':>8} {'backend calls':>14}")
        for name, seconds, cpu, sent in rows:
            print(f"{name:8} {seconds:8.2f} {cpu:8.2f} {sent:14d}")
        report({name: row for name, *row in rows}, unique)


def report(rows: dict[str, list[float]], unique: int) -> None:
    """The targets, from rows of (wall s, CPU s, backend calls) by run name."""
    if "second" in rows:
        (wall1, cpu1, _), (wall2, cpu2, sent2) = rows["first"], rows["second"]
        print(f"second run / first run: wall {wall2 / wall1:.2f}, CPU {cpu2 / cpu1:.2f}")
        # On a shared machine the wall time is mostly waiting for a core; the CPU time is what
        # the run itself costs, and about what it takes on 2 idle cores.
        print(f"target second run: 0 calls -> {'met' if sent2 == 0 else 'NOT met'}; "
              f"< 2 s wall -> {'met' if wall2 < 2 else 'NOT met'}; "
              f"< 2 s CPU -> {'met' if cpu2 < 2 else 'NOT met'}")  # fmt: skip
    if "dup40" in rows:
        sent = rows["dup40"][2]
        print(f"target dup40: calls = unique jobs ({unique}) -> "
              f"{'met' if sent == unique else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()
