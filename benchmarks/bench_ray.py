"""`--engine ray` against a local run: throughput, Ray's start-up cost, and the budget across
actors, on the same fake in the same run.

    python benchmarks/bench_ray.py                     # 5,000 jobs at concurrency 256, 2 actors
    python benchmarks/bench_ray.py --jobs 2000 --actors 1 2

A fake vLLM server with a fixed 50 ms latency runs in a separate process (`python -m
tests.fakes vllm`); each contender runs in its own fresh process:

* `local`: the real `tierline.run.run_files` (what `tierline run` runs), backend
  `max_concurrency` = the concurrency;
* `ray`: `ray.init(num_cpus=2)` of this machine (timed: the cluster's start-up), a 1-job run
  (timed: the actor pool's start-up, the first job's round trip), then the same jobs through
  `tierline.ray.engine.run_files` with the same config (its concurrency split over the actors).

Reported: jobs/s of each, Ray's as a share of local's (target >= 80%), with and without the
start-up; then a `--max-cost` run on each engine: the cap, what was spent (the overshoot is
spent - cap, never positive by construction) and how many jobs each could pay for (the
headroom that leases leave stranded in actors shows as fewer jobs than local).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests.fakes`, as the other benchmarks

MODEL = "bench-model"
MAX_TOKENS = 16
PRICE = {"input_per_mtok": 2000, "output_per_mtok": 4000}


def write_jobs(path: Path, jobs: int) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(jobs):
            prompt = f"Summarize ticket {i}: the printer on floor {i % 7} is jammed again."
            fh.write(json.dumps({"id": f"j{i}", "prompt": prompt, "tier": 1}) + "\n")
    return path


def config(url: str, concurrency: int) -> Any:
    from tierline.config import config_from_mapping

    backend = {
        "kind": "openai-compatible",
        "flavor": "vllm",
        "model": MODEL,
        "base_urls": [url],
        "max_concurrency": concurrency,
        "max_tokens": MAX_TOKENS,
        "price": PRICE,
        # this machine is shared and loaded: a burst of refused connections at start must
        # not open the circuit and fail the whole run (a benchmark of failures measures nothing)
        "max_attempts": 10,
        "circuit_failures": 100_000,
    }
    return config_from_mapping(
        {"backends": {"fake": backend}, "routes": {"1": "fake", "2": "fake", "3": "fake"}},
        origin="bench",
    )


def run_local(cfg: Any, inputs: Path, work: Path, max_cost: float | None) -> Any:
    import asyncio

    from tierline.jobs import ResultWriter
    from tierline.ledger.pricing import to_micros
    from tierline.run import run_files

    writer = ResultWriter(str(work / "local.jsonl"))
    try:
        return asyncio.run(
            run_files(
                [str(inputs)],
                config=cfg,
                writer=writer,
                ledger_path=work / "local.db",
                max_cost_micros=None if max_cost is None else to_micros(max_cost),
            )
        )
    finally:
        writer.close()


def run_ray(cfg: Any, inputs: Path, work: Path, actors: int, max_cost: float | None) -> Any:
    from tierline.jobs import ResultWriter
    from tierline.ledger.pricing import to_micros
    from tierline.ray.engine import RayOptions, run_files

    writer = ResultWriter(str(work / f"ray-{time.monotonic_ns()}.jsonl"))
    try:
        return run_files(
            [str(inputs)],
            config=cfg,
            writer=writer,
            ledger_path=work / "ray.db",
            options=RayOptions(actors=actors),
            max_cost_micros=None if max_cost is None else to_micros(max_cost),
        )
    finally:
        writer.close()


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from decimal import Decimal

    cfg = config(args.url, args.concurrency)
    cap = None if args.max_cost is None else Decimal(str(args.max_cost))
    out: dict[str, Any] = {"mode": args.worker, "jobs": args.jobs, "actors": args.actors[0]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = write_jobs(work / "jobs.jsonl", args.jobs)
        if args.worker == "local":
            t0 = time.perf_counter()
            summary = run_local(cfg, inputs, work, cap)  # type: ignore[arg-type]
            out["seconds"] = time.perf_counter() - t0
        else:
            import logging

            import ray

            t0 = time.perf_counter()
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                object_store_memory=256 * 1024**2,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            out["cluster_start_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            run_ray(cfg, write_jobs(work / "one.jsonl", 1), work, args.actors[0], None)
            out["pool_start_s"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            summary = run_ray(cfg, inputs, work, args.actors[0], cap)  # type: ignore[arg-type]
            out["seconds"] = time.perf_counter() - t2
            ray.shutdown()
        out["ok"] = summary.tally.by_status["ok"]
        out["skipped"] = summary.tally.by_status["skipped_budget"]
        out["spent_usd"] = summary.tally.cost_usd
        out["jobs_per_s"] = args.jobs / out["seconds"]
        if out["ok"] + out["skipped"] != args.jobs:  # say why
            for part in work.glob("*.partial"):
                out["first_failure"] = next(
                    (line[:600] for line in part.open() if '"ok"' not in line), None
                )
    return out


def start_fake(latency_ms: float, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The fake in its own process; what it prints goes to `log` (a pipe nobody reads would
    fill up and stall it mid-run)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakes",
                "vllm",
                "--port",
                "0",
                "--model",
                MODEL,
                "--latency-ms",
                str(latency_ms),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        first = log.read_text(errors="replace").partition("\n")
        if first[1]:
            url = first[0].strip()
            if url.startswith("http"):
                return proc, url
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"fake server did not start: {log.read_text(errors='replace')[:500]!r}")


def run_one(
    mode: str, url: str, args: argparse.Namespace, actors: int, max_cost: float | None
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", mode, "--url", url, "--jobs", str(args.jobs),
           "--concurrency", str(args.concurrency), "--actors", str(actors)]  # fmt: skip
    if max_cost is not None:
        cmd += ["--max-cost", str(max_cost)]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TIERLINE_HOME": tempfile.gettempdir()},
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["ok"] + result["skipped"] != args.jobs:  # a benchmark of failures measures nothing
        raise SystemExit(f"{mode}: only {result['ok']} of {args.jobs} jobs ok: {result}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--actors", type=int, nargs="+", default=[2])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--max-cost", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--budget-usd", type=float, default=100.0, help="the cap of the --max-cost runs"
    )
    parser.add_argument("--worker", choices=("local", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    log = Path(tempfile.mkdtemp()) / "fake.log"
    proc, url = start_fake(args.latency_ms, log)
    try:
        local = run_one("local", url, args, 1, None)
        print(f"local: {local['jobs_per_s']:.0f} jobs/s ({args.jobs} jobs, concurrency "
              f"{args.concurrency}, {local['seconds']:.2f} s)")  # fmt: skip
        for actors in args.actors:
            ray = run_one("ray", url, args, actors, None)
            e2e = args.jobs / (ray["seconds"] + ray["cluster_start_s"] + ray["pool_start_s"])
            print(
                f"ray, {actors} actor(s): {ray['jobs_per_s']:.0f} jobs/s = "
                f"{ray['jobs_per_s'] / local['jobs_per_s']:.0%} of local; start-up: cluster "
                f"{ray['cluster_start_s']:.1f} s + actor pool and first job "
                f"{ray['pool_start_s']:.1f} s; with start-up {e2e:.0f} jobs/s = "
                f"{e2e / local['jobs_per_s']:.0%} of local"
            )
        cap = args.budget_usd
        for mode, actors in [("local", 1)] + [("ray", a) for a in args.actors]:
            row = run_one(mode, url, args, actors, cap)
            print(
                f"--max-cost {cap}: {mode}{'' if mode == 'local' else f', {actors} actor(s)'}: "
                f"spent ${row['spent_usd']:.6f} (overshoot ${row['spent_usd'] - cap:+.6f}), "
                f"{row['ok']} ok, {row['skipped']} skipped_budget"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
