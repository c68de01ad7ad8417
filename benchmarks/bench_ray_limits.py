"""rpm and tpm across Ray actors: the peak rate a backend sees from `--engine ray`, against a
local run's under the same limit, on the same fake in the same run.

    python benchmarks/bench_ray_limits.py                      # 1,800 jobs, 2 actors
    python benchmarks/bench_ray_limits.py --jobs 2400 --actors 2 3

Each engine runs the same jobs twice against a fake vLLM (50 ms, in its own process): once
with `rpm` set, once with `tpm` set, each low enough that the limit, not the backend, paces
the run. The peaks are read from the run's ledger (one row per call, stamped when it
completed): the most requests, and the most tokens (input + output), in any window of
`BURST_S` (10 s: the bucket's burst) and of 60 s. A token bucket lets a process send its
burst at once and then the rate, so the bound over a window of W seconds is
`limit/60 x (BURST_S + W)`, for a local run and, split evenly, for the sum of the actors
(tierline/ray/limits.py). Reported: each peak as a share of the nominal `limit/60 x W`,
local and Ray side by side, and Ray's peak over local's (the overshoot across actors).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_ray import write_jobs  # noqa: E402 - the same jobs as bench_ray

from tierline.dispatch.limits import BURST_S  # noqa: E402 - after the path is set

MODEL = "bench-model"
MAX_TOKENS = 16
WINDOWS = (BURST_S, 60.0)


def config(url: str, limit: dict[str, int]) -> Any:
    from tierline.config import config_from_mapping

    backend = {
        "kind": "openai-compatible",
        "flavor": "vllm",
        "model": MODEL,
        "base_urls": [url],
        "max_concurrency": 64,
        "max_tokens": MAX_TOKENS,
        "price": {"input_per_mtok": 2000, "output_per_mtok": 4000},
        "max_attempts": 10,
        "circuit_failures": 100_000,
        **limit,
    }
    return config_from_mapping(
        {"backends": {"fake": backend}, "routes": {"1": "fake", "2": "fake", "3": "fake"}},
        origin="bench",
    )


def start_fake(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes", "vllm", "--port", "0", "--model", MODEL,
             "--latency-ms", "50"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        first, newline, _ = log.read_text(errors="replace").partition("\n")
        if newline and first.startswith("http"):
            return proc, first.strip()
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"fake server did not start: {log.read_text(errors='replace')[:500]!r}")


def run(engine: str, cfg: Any, inputs: Path, ledger: Path, actors: int) -> None:
    from tierline.jobs import ResultWriter

    writer = ResultWriter(str(ledger.with_suffix(".jsonl")))
    try:
        if engine == "local":
            from tierline.run import run_files

            asyncio.run(run_files([str(inputs)], config=cfg, writer=writer, ledger_path=ledger))
        else:
            from tierline.ray.engine import RayOptions
            from tierline.ray.engine import run_files as run_ray

            run_ray([str(inputs)], config=cfg, writer=writer, ledger_path=ledger,
                    options=RayOptions(actors=actors))  # fmt: skip
    finally:
        writer.close()


def peaks(ledger: Path) -> dict[str, float]:
    """The most calls and tokens in any window of each length, from the ledger's call rows."""
    import sqlite3

    with sqlite3.connect(ledger) as db:
        rows = db.execute(
            "SELECT created_at, input_tokens + output_tokens FROM calls ORDER BY created_at"
        ).fetchall()
    times = [datetime.fromisoformat(at).timestamp() for at, _ in rows]
    tokens = [int(n) for _, n in rows]
    out: dict[str, float] = {"calls": len(rows)}
    for window in WINDOWS:
        most_calls = most_tokens = start = in_window = 0
        for end, at in enumerate(times):
            in_window += tokens[end]
            while times[start] <= at - window:
                in_window -= tokens[start]
                start += 1
            most_calls = max(most_calls, end - start + 1)
            most_tokens = max(most_tokens, in_window)
        out[f"calls_{window:g}s"] = most_calls
        out[f"tokens_{window:g}s"] = most_tokens
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1800)  # > 70 s at the default limits
    parser.add_argument("--actors", type=int, nargs="+", default=[2])
    parser.add_argument("--rpm", type=int, default=1200, help="rpm of the rpm runs (20/s)")
    parser.add_argument("--tpm", type=int, default=48_000, help="tpm of the tpm runs")
    args = parser.parse_args()
    limits = {"rpm": {"rpm": args.rpm}, "tpm": {"tpm": args.tpm}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fake, url = start_fake(work / "fake.log")
        try:
            inputs = write_jobs(work / "jobs.jsonl", args.jobs)
            results: dict[tuple[str, str], dict[str, float]] = {}
            for name, limit in limits.items():
                ledger = work / f"local-{name}.db"
                run("local", config(url, limit), inputs, ledger, 1)
                results[(name, "local")] = peaks(ledger)
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     object_store_memory=256 * 1024**2, logging_level=logging.ERROR)  # fmt: skip
            for actors in args.actors:
                for name, limit in limits.items():
                    ledger = work / f"ray{actors}-{name}.db"
                    run("ray", config(url, limit), inputs, ledger, actors)
                    results[(name, f"ray {actors} actors")] = peaks(ledger)
            ray.shutdown()
        finally:
            fake.kill()
            fake.wait()
    print(f"{args.jobs} jobs, 50 ms fake, rpm {args.rpm} / tpm {args.tpm} per run; peak in any "
          f"window as a share of limit/60 x window (bound: (window + {BURST_S:g}) / window)")  # fmt: skip
    for name in limits:
        unit = "calls" if name == "rpm" else "tokens"
        per_s = (args.rpm if name == "rpm" else args.tpm) / 60
        local = results[(name, "local")]
        for engine, got in ((k[1], v) for k, v in results.items() if k[0] == name):
            cells = []
            for window in WINDOWS:
                peak = got[f"{unit}_{window:g}s"]
                share = peak / (per_s * window)
                versus = peak / local[f"{unit}_{window:g}s"]
                cells.append(
                    f"{window:g} s: {peak:,.0f} {unit} = {share:.2f}x ({versus:.2f}x local)"
                )
            print(f"{name} {engine:>14}: {int(got['calls'])} calls; " + "; ".join(cells))


if __name__ == "__main__":
    main()
