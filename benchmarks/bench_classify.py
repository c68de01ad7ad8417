"""Benchmark `tierline classify`: jobs/s and peak RSS against an orjson read/write floor.

    python benchmarks/bench_classify.py [--sizes 100000 1000000] [--workdir DIR]

For each size it generates a JSONL file of varied jobs (tier-1 chores, code, writing, math,
long documents), then runs, each in a fresh subprocess so peak RSS is per measurement:

* ``floor``: read every line with orjson and write it back with orjson, nothing else;
* ``classify``: the real `tierline classify` path, `tierline.run.classify_files`, with the
  default config's pipeline (rules, heuristics, shipped classifier): worker processes on every
  core when the input is big (tierline/run/classify.py), the imports and model load included;
* ``classify1``: the same kept in one process (``workers=0``: a one-core machine);
* ``tier``: the tiering alone, on up to 100k jobs parsed beforehand (where the time goes);
* ``start``: classify's fixed start-up alone (imports, config, model load: no job), printed
  beside the headline ratio, which keeps it in, as a ratio without it.

It prints the classify/floor ratios of wall time and of CPU time (this process's plus its
workers': all cores' seconds), and the peak RSS of the command and of its largest worker.
numpy is limited to one thread per process by the environment set below.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

# The classifier's numpy work must not borrow another core: cores are the workers'.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

_SUBJECTS = [
    "the quarterly report",
    "this support ticket",
    "the attached email",
    "my notes",
    "the release notes",
    "this customer review",
    "the meeting transcript",
]
_TEMPLATES = [
    "Summarize {s} in three bullet points:\n\n{body}",
    "Classify {s} as billing, technical or account: {body}",
    "Extract the names, dates and amounts from {s} as JSON.\n{body}",
    "What is the capital of {country}?",
    "Write a Python function that parses {s} and returns a dict of totals per customer, with tests.",
    "Write a persuasive essay of 800 words about {topic}, in a warm but formal tone.",
    "Let $n$ be a positive integer such that $n^2 + {k}n$ is a perfect square. Find all such $n$ and prove there are no others.",
    "A shop sells {k} apples at $2 each and {k2} pears at $3 each. How much money does it take in?",
    "Design a fault-tolerant scheduler for {k} heterogeneous machines with conflicting deadlines, and prove its approximation ratio.",
]
_WORDS = [
    "order",
    "delivery",
    "invoice",
    "refund",
    "account",
    "password",
    "meeting",
    "budget",
    "deadline",
    "customer",
    "shipment",
    "contract",
    "payment",
    "product",
    "service",
    "update",
    "issue",
    "report",
    "team",
    "project",
]


def _prompt(rng: random.Random) -> str:
    body = " ".join(rng.choice(_WORDS) for _ in range(rng.choice((10, 40, 120, 400))))
    return rng.choice(_TEMPLATES).format(
        s=rng.choice(_SUBJECTS),
        body=body,
        country=rng.choice(("France", "Peru", "Japan")),
        topic=rng.choice(("remote work", "city parks", "nuclear power")),
        k=rng.randint(2, 99),
        k2=rng.randint(2, 99),
    )


def generate(path: Path, n: int) -> None:
    """Write n jobs with stable ids (seeded: the same file every time)."""
    rng = random.Random(n)
    with path.open("wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({"id": f"job-{i}", "prompt": _prompt(rng)}) + b"\n")


def run_floor(src: str, dst: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for line in fin:
            fout.write(orjson.dumps(orjson.loads(line), option=orjson.OPT_APPEND_NEWLINE))


def run_classify(src: str, dst: str, workers: int | None = None) -> None:
    """The real `tierline classify` path with no config file (tierline/cli/classify.py):
    worker processes when the input is big enough."""
    from tierline.config import default_tiering
    from tierline.run.classify import classify_files

    classify_files([src], dst, default_tiering(), workers=workers)


def run_classify_one(src: str, dst: str) -> None:
    """The same path kept in one process (what a machine with one core gets)."""
    run_classify(src, dst, workers=0)


def run_tier_only(src: str, _dst: str) -> float:
    """Tier already-parsed jobs (at most 100k) and return the CPU seconds the tiering took."""
    from itertools import islice

    from tierline.config import embedded_default
    from tierline.jobs import read_jobs
    from tierline.tiering.pipeline import Tierer, classify

    tierer = Tierer.from_config(embedded_default().tiering)
    jobs = list(islice(read_jobs([src]), 100_000))
    cpu = time.process_time()
    for _ in classify(jobs, tierer):
        pass
    return time.process_time() - cpu


def run_start(_src: str, _dst: str) -> None:
    """Only classify's fixed start-up: the imports, the config and the model load, no job."""
    from tierline.config import default_tiering
    from tierline.run.classify import classify_files  # noqa: F401  (what classify imports)
    from tierline.tiering.pipeline import Tierer

    Tierer.from_config(default_tiering())


RUNS = {
    "floor": run_floor,
    "classify": run_classify,
    "classify1": run_classify_one,
    "start": run_start,
}


def child(mode: str, src: str, dst: str) -> None:
    """Print 'wall_seconds cpu_seconds peak_rss_mib worker_peak_rss_mib' for one run (called in
    a fresh process).

    CPU time is reported beside wall time because a shared machine's other load inflates wall
    time; it is this process's plus its worker processes' (all cores' seconds).
    """
    if mode == "tier":
        cpu = run_tier_only(src, dst)
        print(f"{cpu:.3f} {cpu:.3f} 0 0")
        return
    start, cpu = time.perf_counter(), _cpu()
    RUNS[mode](src, dst)
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{elapsed:.3f} {cpu:.3f} {peak:.1f} {workers:.1f}")


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers, once reaped
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(mode: str, src: Path, workdir: Path) -> tuple[float, float, float, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(src), str(workdir / f"out-{mode}.jsonl")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), float(out[1]), float(out[2]), float(out[3])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        for n in args.sizes:
            src = work / f"jobs-{n}.jsonl"
            generate(src, n)
            size_mb = src.stat().st_size / 2**20
            floor_s, floor_cpu, floor_rss, _ = measure("floor", src, work)
            cls_s, cls_cpu, cls_rss, worker_rss = measure("classify", src, work)
            one_s, one_cpu, one_rss, _ = measure("classify1", src, work)
            tier_cpu = measure("tier", src, work)[1]
            start_s = measure("start", src, work)[0]
            print(
                f"{n:>9} jobs ({size_mb:.0f} MiB) | floor {n / floor_s:>8,.0f} jobs/s wall, "
                f"{n / floor_cpu:>8,.0f}/s cpu, peak {floor_rss:4.0f} MiB\n"
                f"          classify  {n / cls_s:>8,.0f} jobs/s wall, {n / cls_cpu:>8,.0f}/s cpu, "
                f"peak {cls_rss:4.0f} MiB + {worker_rss:4.0f} MiB per worker | "
                f"classify/floor x{cls_s / floor_s:.2f} wall, x{cls_cpu / floor_cpu:.2f} cpu\n"
                f"          fixed start-up (imports, config, model) {start_s:.3f} s wall | "
                f"classify/floor without it x{(cls_s - start_s) / floor_s:.2f} wall\n"
                f"          1 process {n / one_s:>8,.0f} jobs/s wall, {n / one_cpu:>8,.0f}/s cpu, "
                f"peak {one_rss:4.0f} MiB | x{one_s / floor_s:.2f} wall, "
                f"x{one_cpu / floor_cpu:.2f} cpu | tiering alone (parsed jobs) "
                f"{min(n, 100_000) / tier_cpu:,.0f} jobs/s cpu"
            )


if __name__ == "__main__":
    main()
