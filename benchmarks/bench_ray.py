"""`--engine ray` against a local run: throughput, CPU per job, Ray's start-up cost, and the
budget across actors, on the same fake in the same run.

    python benchmarks/bench_ray.py                     # 5,000 jobs at concurrency 256, 1 and 2 actors
    python benchmarks/bench_ray.py --jobs 5000 --actors 1 2 --rounds 3

A fake vLLM server with a fixed 50 ms latency runs in a separate process (`python -m
tests.fakes vllm`); each contender runs in its own fresh process, on the same jobs file, the
same config (backend `max_concurrency` = the concurrency; Ray splits it over the actors) and the
same fake:

* `local`: the real `tierline.run.run_files` (what `tierline run` runs);
* `ray`: `ray.init(num_cpus=2)` of this machine (timed: the cluster's start-up), a 1-job run
  (timed: what one run on a running cluster costs at least: the actor pool's start and a job's
  round trip), then the jobs through `tierline.ray.engine.run_files`, which starts a pool of
  its own again (every run does).

Each round runs local, then Ray with each `--actors`, alternately (the machine's load drifts:
compare within a round). For each run it prints:

* `run`: jobs / the wall time of `run_files` (for Ray: on a running cluster, its own actor
  pool's start included; this is the headline, what a run on an existing cluster gets);
* `steady`: the middle 80% of the run's requests / the time the fake took to answer them,
  counted at the fake (its /metrics): start-up and tail excluded, the same for both engines;
* `+cluster`: for Ray, jobs / (`ray.init` + the run): a run that starts its own cluster;
* `cpu/1k`: CPU seconds per 1,000 jobs summed over every process of the contender during the
  run (the driver, and for Ray the actors, raylet, GCS and Ray's other daemons), by kind; the
  fake server's separately. CPU seconds do not depend on what else the machine runs, unlike
  wall time: on a shared machine they are the robust comparison.

Then a `--max-cost` run on each engine: the cap, what was spent (the overshoot is spent - cap,
never positive by construction) and how many jobs each could pay for.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests.fakes`, as the other benchmarks

MODEL = "bench-model"
MAX_TOKENS = 16
PRICE = {"input_per_mtok": 2000, "output_per_mtok": 4000}
TICK = os.sysconf("SC_CLK_TCK")


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


# --- CPU of a process tree (Linux /proc) ------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, float] | None:
    """(parent pid, start time, CPU seconds) of a process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / TICK


SETTLED = ("driver", "dispatchers", "run state", "raylet", "gcs", "ray other")


def _kind(pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "ray other"
    # a Ray worker's title names the actor it became (`ray::MapWorker(MapBatches(Dispatcher))`)
    if cmd and cmd[0].startswith(b"ray::MapWorker"):
        return "dispatchers"
    if cmd and cmd[0].startswith(b"ray::RunState"):
        return "run state"
    if cmd and (cmd[0].startswith(b"ray::") or any(a.endswith(b"default_worker.py") for a in cmd)):
        return "ray workers"  # idle, or Ray Data's own; checked again at each sample
    if cmd and cmd[0].endswith(b"raylet"):
        return "raylet"
    if cmd and cmd[0].endswith(b"gcs_server"):
        return "gcs"
    return "ray other"  # dashboard agent, log monitor, runtime env agent


class TreeCPU:
    """CPU seconds used by this process and all its descendants between `start` and `stop`,
    by kind, less the sampling thread's own. Sampled every 100 ms, so a process that exits
    between samples loses at most its last 100 ms: the sum undercounts slightly, never over."""

    def __init__(self) -> None:
        self.root = os.getpid()
        self.base: dict[tuple[int, int], float] = {}
        self.seen: dict[tuple[int, int], tuple[str, float]] = {}
        self.own = 0.0
        self.series: list[tuple[float, dict[str, float]]] = []  # (time, CPU s so far by kind)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> None:
        stats = {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := _stat(int(e)))}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo, mine = [self.root], []
        while todo:
            pid = todo.pop()
            mine.append(pid)
            todo += children.get(pid, [])
        for pid in mine:
            if pid in stats:
                key = (pid, stats[pid][1])
                known = self.seen.get(key, ("", 0.0))[0]
                kind = known if known in SETTLED else _kind(pid, self.root)
                self.seen[key] = (kind, stats[pid][2])
        if threading.current_thread() is self.thread:
            self.own = time.thread_time()
        self.series.append((time.perf_counter(), self._by_kind()))

    def _poll(self) -> None:
        while not self.done.wait(0.1):
            self._sample()

    def start(self) -> TreeCPU:
        self._sample()
        self.base = {key: cpu for key, (_, cpu) in self.seen.items()}
        self.series = []
        self.thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.thread.join()
        self._sample()
        return self._by_kind()

    def _by_kind(self) -> dict[str, float]:
        by_kind: dict[str, float] = {"driver": -self.own}  # the sampling is not the driver's
        for key, (kind, cpu) in self.seen.items():
            by_kind[kind] = by_kind.get(kind, 0.0) + cpu - self.base.get(key, 0.0)
        return by_kind


# --- the contenders (each in its own process) --------------------------------------------------


class Clock:
    """When the run started and when its first result reached the driver."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def __call__(self, _result: Any) -> None:
        if self.first is None:
            self.first = time.perf_counter()


def run_local(cfg: Any, inputs: Path, work: Path, max_cost: Any, clock: Clock) -> Any:
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
                on_result=clock,
                max_cost_micros=None if max_cost is None else to_micros(max_cost),
            )
        )
    finally:
        writer.close()


def run_ray(
    cfg: Any, inputs: Path, work: Path, actors: int, max_cost: Any, clock: Clock | None = None
) -> Any:
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
            on_result=clock,
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
        if args.worker == "ray":
            import logging

            import ray

            import tierline.ray.engine  # imported before the clock, as local's is

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
            cpu = TreeCPU().start()
            run_ray(cfg, write_jobs(work / "one.jsonl", 1), work, args.actors[0], None)
            out["one_job_s"] = time.perf_counter() - t1
            out["one_job_cpu"] = sum(cpu.stop().values())
        else:
            import tierline.run.files  # noqa: F401  (imported before the clock, as Ray's is)
        cpu = TreeCPU().start()
        clock = Clock()
        if args.worker == "local":
            summary = run_local(cfg, inputs, work, cap, clock)
        else:
            summary = run_ray(cfg, inputs, work, args.actors[0], cap, clock)
        out["seconds"] = time.perf_counter() - clock.start
        out["cpu"] = cpu.stop()
        out["cpu_series"] = cpu.series
        if args.worker == "ray":
            ray.shutdown()
        out["first_s"] = (clock.first or time.perf_counter()) - clock.start
        out["ok"] = summary.tally.by_status["ok"]
        out["skipped"] = summary.tally.by_status["skipped_budget"]
        out["spent_usd"] = summary.tally.cost_usd
        if out["ok"] + out["skipped"] != args.jobs:  # say why
            for part in work.glob("*.partial"):
                out["first_failure"] = next(
                    (line[:600] for line in part.open() if '"ok"' not in line), None
                )
    return out


# --- the parent: the fake, the rounds, the report ----------------------------------------------


class ServedRate:
    """The fake's count of answered requests (its /metrics), sampled every 100 ms while a
    contender runs: the steady rate is the middle 80% of the run's requests over the time they
    took, measured at the server, the same way for both engines (the driver sees Ray's
    results only as whole blocks arrive, which would flatter Ray's rate)."""

    def __init__(self, url: str) -> None:
        self.url = url.removesuffix("/v1") + "/metrics"
        self.samples: list[tuple[float, float]] = []
        self.running: list[tuple[float, float]] = []  # (time, requests in the fake right then)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _count(self) -> float:
        import urllib.request

        with urllib.request.urlopen(self.url, timeout=5) as reply:
            values = {
                line.partition("{")[0]: float(line.rsplit(" ", 1)[1])
                for line in reply.read().decode().splitlines()
                if line.startswith("vllm:")
            }
        self.running.append((time.perf_counter(), values.get("vllm:num_requests_running", 0.0)))
        return values.get("vllm:request_success_total", 0.0)

    def _poll(self) -> None:
        while not self.done.wait(0.1):
            try:
                self.samples.append((time.perf_counter(), self._count()))
            except OSError:  # the fake too busy to answer in time: the next sample counts
                continue

    def __enter__(self) -> ServedRate:
        self.samples.append((time.perf_counter(), self._count()))
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.samples.append((time.perf_counter(), self._count()))

    def _when(self, count: float) -> float:
        """When the server had answered `count` requests (interpolated between samples)."""
        for (t0, c0), (t1, c1) in itertools.pairwise(self.samples):
            if c1 >= count:
                return t0 if c1 == c0 else t0 + (t1 - t0) * (count - c0) / (c1 - c0)
        return self.samples[-1][0]

    def window(self) -> tuple[float, float, float]:
        """(start, end, requests) of the middle 80% of the requests answered."""
        base, served = self.samples[0][1], self.samples[-1][1] - self.samples[0][1]
        lo, hi = base + 0.1 * served, base + 0.9 * served
        return self._when(lo), self._when(hi), hi - lo

    def in_flight(self, start: float, end: float) -> float:
        """The mean number of requests the fake held between `start` and `end`."""
        inside = [n for t, n in self.running if start <= t <= end]
        return statistics.mean(inside) if inside else float("nan")


def _at(series: list[tuple[float, dict[str, float]]], when: float) -> dict[str, float]:
    """A cumulative series' values at `when` (interpolated)."""
    for (t0, v0), (t1, v1) in itertools.pairwise(series):
        if t1 >= when:
            share = 0.0 if t1 == t0 else (max(when, t0) - t0) / (t1 - t0)
            return {k: v0.get(k, 0.0) + (v - v0.get(k, 0.0)) * share for k, v in v1.items()}
    return series[-1][1]


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
    mode: str, fake: subprocess.Popen[bytes], url: str, args: argparse.Namespace, actors: int,
    max_cost: float | None,
) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, __file__, "--worker", mode, "--url", url, "--jobs", str(args.jobs),
           "--concurrency", str(args.concurrency), "--actors", str(actors)]  # fmt: skip
    if max_cost is not None:
        cmd += ["--max-cost", str(max_cost)]
    fake_cpu = _stat(fake.pid)
    with ServedRate(url) as served:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "TIERLINE_HOME": tempfile.gettempdir()},
        )
    after = _stat(fake.pid)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["ok"] + result["skipped"] != args.jobs:  # a benchmark of failures measures nothing
        raise SystemExit(f"{mode}: only {result['ok']} of {args.jobs} jobs ok: {result}")
    # the fake's CPU over the whole contender (Ray's warm-up job included: one job, negligible)
    result["fake_cpu"] = after[2] - fake_cpu[2] if after and fake_cpu else float("nan")
    start, end, requests = served.window()
    result["steady"] = requests / (end - start) if end > start else float("nan")
    result["in_flight"] = served.in_flight(start, end)
    series = result.pop("cpu_series")
    lo, hi = _at(series, start), _at(series, end)
    result["steady_cpu"] = {k: (v - lo.get(k, 0.0)) / requests for k, v in hi.items()}
    return result


def rates(row: dict[str, Any], jobs: int) -> dict[str, float]:
    out = {
        "run": jobs / row["seconds"],
        "steady": row["steady"],
        "cpu": 1000 * sum(row["cpu"].values()) / jobs,
        "steady_cpu": 1000 * sum(row["steady_cpu"].values()),
        "fake_cpu": 1000 * row["fake_cpu"] / jobs,
    }
    if "cluster_start_s" in row:
        out["cluster"] = jobs / (row["cluster_start_s"] + row["seconds"])
    return out


def describe(name: str, row: dict[str, Any], jobs: int, local: dict[str, Any] | None) -> str:
    r = rates(row, jobs)

    def vs(key: str) -> str:
        return "" if local is None else f" = {r[key] / rates(local, jobs)[key]:.0%}"

    def kinds(cpu: dict[str, float], per: float) -> str:
        shares = {k: 1000 * v / per for k, v in sorted(cpu.items())}
        return ", ".join(f"{k} {v:.2f}" for k, v in shares.items() if v >= 0.005)

    text = f"{name}: run {r['run']:.0f} jobs/s{vs('run')}, steady {r['steady']:.0f}{vs('steady')}"
    if "cluster" in r:
        text += f", +cluster {r['cluster']:.0f}"
        if local is not None:  # against local's run: a local run has no cluster to start
            text += f" = {r['cluster'] / rates(local, jobs)['run']:.0%}"
        text += (
            f"; start-up: cluster {row['cluster_start_s']:.1f} s, a 1-job run "
            f"{row['one_job_s']:.1f} s ({row['one_job_cpu']:.1f} CPU s), this run's first result "
            f"{row['first_s']:.1f} s"
        )
    else:
        text += f"; first result {row['first_s']:.2f} s"
    text += (
        f"; in flight {row['in_flight']:.0f}"
        f"; CPU s per 1k jobs: steady {r['steady_cpu']:.2f} ({kinds(row['steady_cpu'], 1)}), "
        f"whole run {r['cpu']:.2f} ({kinds(row['cpu'], jobs)}), "
        f"fake {r['fake_cpu']:.2f}"
    )
    return text


def summary(name: str, runs: list[dict[str, Any]], local: list[dict[str, Any]], jobs: int) -> str:
    """Medians over the rounds of Ray's ratios to the local run of the same round, and where
    Ray's steady rate, if higher, pays back its start-up (the jobs of a run at break-even)."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    pairs = [(rates(r, jobs), rates(lo, jobs), r, lo) for r, lo in zip(runs, local, strict=True)]
    run = med([r["run"] / lo["run"] for r, lo, _, _ in pairs])
    steady = med([r["steady"] / lo["steady"] for r, lo, _, _ in pairs])
    cluster = med([r["cluster"] / lo["run"] for r, lo, _, _ in pairs])
    cpu = med([r["steady_cpu"] / lo["steady_cpu"] for r, lo, _, _ in pairs])
    ray_cpu = med([r["steady_cpu"] for r, _, _, _ in pairs])
    local_cpu = med([lo["steady_cpu"] for _, lo, _, _ in pairs])
    text = (
        f"{name} vs local, median of {len(runs)} round(s): steady {steady:.0%} (target >= 80%), "
        f"run on a running cluster {run:.0%}, with the cluster's start {cluster:.0%}; "
        f"steady CPU s per 1k jobs {ray_cpu:.2f} vs {local_cpu:.2f} ({cpu:.0%}); start-up: "
        f"cluster {med([x['cluster_start_s'] for x in runs]):.1f} s, "
        f"a 1-job run {med([x['one_job_s'] for x in runs]):.1f} s "
        f"({med([x['one_job_cpu'] for x in runs]):.1f} CPU s)"
    )
    # run time = first result + jobs / steady rate: equal at the break-even job count
    lag = med([x["first_s"] for x in runs]) - med([x["first_s"] for x in local])
    gain = 1 / med([lo["steady"] for _, lo, _, _ in pairs]) - 1 / med(
        [r["steady"] for r, _, _, _ in pairs]
    )
    if gain > 0:
        text += f"; Ray's run is as fast as local's from about {lag / gain:,.0f} jobs"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--no-budget", action="store_true", help="skip the --max-cost runs")
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
    n = args.jobs
    print(f"{n} jobs, concurrency {args.concurrency}, fake latency {args.latency_ms:g} ms")
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        for i in range(1, args.rounds + 1):
            local = run_one("local", proc, url, args, 1, None)
            rows.setdefault("local", []).append(local)
            print(f"round {i}: " + describe("local", local, n, None), flush=True)
            for actors in args.actors:
                ray = run_one("ray", proc, url, args, actors, None)
                rows.setdefault(f"ray x{actors}", []).append(ray)
                print(f"round {i}: " + describe(f"ray x{actors}", ray, n, local), flush=True)
        for name, runs in rows.items():
            if name != "local":
                print(summary(name, runs, rows["local"], n))
        if not args.no_budget:
            cap = args.budget_usd
            for mode, actors in [("local", 1)] + [("ray", a) for a in args.actors]:
                row = run_one(mode, proc, url, args, actors, cap)
                print(
                    f"--max-cost {cap}: {mode}"
                    f"{'' if mode == 'local' else f', {actors} actor(s)'}: "
                    f"spent ${row['spent_usd']:.6f} (overshoot ${row['spent_usd'] - cap:+.6f}), "
                    f"{row['ok']} ok, {row['skipped']} skipped_budget"
                )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
