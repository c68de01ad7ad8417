"""The local llama.cpp runner against raw llama-cpp-python, same build, same threads, one run.

    python benchmarks/bench_local.py                  # every measurement below (a few minutes)
    python benchmarks/bench_local.py --only build     # the build's raw speeds (variant table)

Measured, each against a baseline taken in the same run (this machine is shared and noisy, so
the ratios are what to compare; docs/local.md has the table and the targets):

* `build`: the installed llama-cpp-python build alone, in this process: prompt processing of a
  400-token prompt (tokens/s, after a warm-up) and single-stream generation (64 tokens at
  temperature 0), with the instruction sets the build was compiled for;
* `throughput`: generated tokens/s of `tierline run` on 32 short jobs with the embedded default
  config (the whole command: start-up, model load, tiering, results, ledger) against raw
  single-stream llama-cpp-python over the same 32 prompts (`create_chat_completion`: the chat
  template, then `Llama.__call__`'s loop; model load not timed: the raw side's favour); also CPU
  milliseconds per generated token on both sides (tierline's parent and workers together),
  which a busy machine disturbs far less than wall time; `--parallel N` adds runs at other
  `parallel` values;
* `readme`: wall time of the README's first command, `tierline run examples/jobs.jsonl -o
  out.jsonl` (target < 60 s);
* `overhead`: what the worker process adds to a 1-token job: its latency seen by the backend
  minus the time the worker spent on it from arrival to answer (pipes, JSON, asyncio; mean and
  max of 20 jobs one after the other);
* `rss`: peak resident memory of `tierline run` with `workers = 2` (the parent and its workers
  summed, sampled every 20 ms; each process's own peak too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The workers run with OMP_WAIT_POLICY=PASSIVE (docs/local.md); the in-process baselines get the
# same, unless the caller sets it (OMP_WAIT_POLICY=ACTIVE measures spinning threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
N_JOBS = 32
MAX_TOKENS = 64
THREADS = os.cpu_count() or 1

TOPICS = [
    "the moon",
    "coffee",
    "a bicycle",
    "rain",
    "the ocean",
    "a library",
    "winter",
    "bread",
    "a volcano",
    "music",
    "a forest",
    "trains",
    "honey",
    "the desert",
    "chess",
    "a lighthouse",
]


def short_prompts(n: int = N_JOBS) -> list[str]:
    return [
        f"Write two sentences about {TOPICS[i % len(TOPICS)]}." + " Be brief." * (i // 16)
        for i in range(n)
    ]


def long_prompt() -> str:
    """About 400 tokens of ordinary English (SmolLM2's tokenizer)."""
    sentence = (
        "The committee reviewed the quarterly report, discussed the budget for the new "
        "warehouse, and asked the logistics team for a revised delivery schedule. "
    )
    return "Summarize the following notes.\n\n" + sentence * 16


MODEL: str | None = None  # --model: measure `build` on another GGUF file


def model_path() -> str:
    from tierline.dispatch.llamacpp import default_model_path

    return MODEL or str(default_model_path())


def build_info() -> str:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    return " ".join(
        p.split("=")[0].strip().split(":")[-1].strip()
        for p in info.split("|")
        if p.strip().endswith("= 1")
    )


def bench_build() -> dict[str, Any]:
    """Raw prompt and generation speed of the installed build, in this process."""
    from llama_cpp import Llama

    llama = Llama(
        model_path=model_path(),
        n_ctx=1024,
        n_batch=512,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        verbose=False,
        seed=0,
    )
    tokens = llama.tokenize(long_prompt().encode())
    llama.reset()
    llama.eval(tokens)  # warm-up: first-touch of the weights, thread pool start
    pp = []
    for _ in range(3):
        llama.reset()
        started = time.perf_counter()
        llama.eval(tokens)
        pp.append(len(tokens) / (time.perf_counter() - started))
    tg = []
    for prompt in short_prompts(4):
        llama.reset()
        started = time.perf_counter()
        out = chat(llama, prompt, MAX_TOKENS)
        tg.append(out["usage"]["completion_tokens"] / (time.perf_counter() - started))
    tg = tg[1:]  # the first call warmed up
    llama.close()
    return {
        "build": build_info(),
        "model": os.path.basename(model_path()),
        "prompt_tokens": len(tokens),
        "threads": THREADS,
        "pp_tok_s": round(statistics.median(pp), 1),
        "tg_tok_s": round(statistics.median(tg), 1),
    }


def chat(llama: Any, prompt: str, max_tokens: int) -> Any:
    """One single-stream call on the chat-templated prompt, as the old in-process backend made
    it (`create_chat_completion`: the template, then `Llama.__call__`'s generation loop).
    Temperature 0, so the worker and this generate the same tokens."""
    return llama.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0
    )


def raw_loop(prompts: list[str]) -> dict[str, Any]:
    """Single-stream llama-cpp-python over the prompts, one after the other (load not timed)."""
    from llama_cpp import Llama

    llama = Llama(
        model_path=model_path(),
        n_ctx=2048,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        verbose=False,
        seed=0,
    )
    started, cpu = time.perf_counter(), time.process_time()
    generated = 0
    for prompt in prompts:
        generated += chat(llama, prompt, MAX_TOKENS)["usage"]["completion_tokens"]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    llama.close()
    return {
        "generated": generated,
        "seconds": round(seconds, 2),
        "tok_s": round(generated / seconds, 1),
        "cpu_ms_per_token": round(cpu * 1000 / generated, 1),
    }


class TreeRSS:
    """Peak of the summed RSS of a process and its descendants, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.per_process = pid, 0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                rss = int(fields.get("VmRSS", "0 kB").split()[0])
                hwm = int(fields.get("VmHWM", "0 kB").split()[0])
                total += rss
                self.per_process[pid] = max(self.per_process.get(pid, 0), hwm)
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def tierline_run(jobs: Path, workdir: Path, config: str | None = None) -> dict[str, Any]:
    """`tierline run JOBS -o out.jsonl` as a user runs it; wall time, tokens, peak RSS."""
    out = workdir / "out.jsonl"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "tierline", "run", str(jobs), "-o", str(out), "-q", "--fresh"]
    if config:
        (workdir / "bench.toml").write_text(config)
        cmd += ["--config", str(workdir / "bench.toml")]
    env = {**os.environ, "TIERLINE_HOME": str(workdir)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=workdir, stderr=subprocess.PIPE, text=True)
    rss = TreeRSS(proc.pid)
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    rss.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # tierline and its workers, reaped
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    generated = sum((r.get("usage") or {}).get("output_tokens", 0) for r in results)
    ok = sum(r["status"] == "ok" for r in results)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"tierline run failed ({proc.returncode}): {err}")
    return {
        "jobs": len(results),
        "ok": ok,
        "generated": generated,
        "seconds": round(seconds, 2),
        "tok_s": round(generated / seconds, 1),
        "cpu_ms_per_token": round(cpu * 1000 / max(generated, 1), 1),
        "peak_rss_mb": round(rss.peak / 1024),
        "per_process_peak_mb": sorted(round(v / 1024) for v in rss.per_process.values()),
    }


def bench_throughput(workdir: Path, parallel: list[int], workers: list[int]) -> dict[str, Any]:
    prompts = short_prompts()
    jobs = workdir / "short.jsonl"
    jobs.write_text(
        "".join(
            json.dumps({"id": f"s{i}", "prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0.0})
            + "\n"
            for i, p in enumerate(prompts)
        )
    )
    raw = raw_loop(prompts)
    out: dict[str, Any] = {
        "raw_llama_call_loop": raw,
        "tierline_default": tierline_run(jobs, workdir),
    }
    out["ratio_default"] = round(out["tierline_default"]["tok_s"] / raw["tok_s"], 2)
    out["cpu_ratio_default"] = round(
        raw["cpu_ms_per_token"] / out["tierline_default"]["cpu_ms_per_token"], 2
    )
    # --parallel N: one worker of all the threads, N sequences; --workers N: N workers, default
    # parallel.
    settings = [("parallel", p, f"workers = 1\nparallel = {p}") for p in parallel]
    settings += [("workers", w, f"workers = {w}") for w in workers]
    for key, value, lines in settings:
        config = (
            f'[backends.local]\nkind = "llamacpp"\nmax_tokens = 256\n{lines}\n'
            '[routes]\n1 = ["local"]\n2 = ["local"]\n3 = ["local"]\n'
        )
        run = tierline_run(jobs, workdir, config)
        out[f"tierline_{key}_{value}"] = {**run, "ratio": round(run["tok_s"] / raw["tok_s"], 2)}
    return out


async def _overhead(prompts: list[str]) -> list[float]:
    """Per 1-token job: its latency through the worker minus the time the worker spent on it
    (worker_s, measured inside the worker from the job's arrival to its answer)."""
    from tierline.config import LlamaCppBackendConfig
    from tierline.dispatch.base import Request
    from tierline.dispatch.llamacpp import LlamaCppBackend
    from tierline.jobs import Message

    backend = LlamaCppBackend("local", LlamaCppBackendConfig(kind="llamacpp", parallel=1))
    try:
        await backend.complete(Request(messages=(Message("user", "warm up"),), max_tokens=1))
        overheads = []
        for prompt in prompts:
            request = Request(messages=(Message("user", prompt),), max_tokens=1, temperature=0.0)
            started = time.perf_counter()
            answer = await backend.complete(request)
            overheads.append(time.perf_counter() - started - answer.extra["worker_s"])
    finally:
        await backend.aclose()
    return overheads


def bench_overhead() -> dict[str, Any]:
    overheads = asyncio.run(_overhead(short_prompts(20)))
    return {
        "jobs": len(overheads),
        "mean_ms": round(statistics.mean(overheads) * 1000, 2),
        "max_ms": round(max(overheads) * 1000, 2),
    }


def bench_readme(workdir: Path) -> dict[str, Any]:
    return tierline_run(ROOT / "examples" / "jobs.jsonl", workdir)


def bench_rss(workdir: Path) -> dict[str, Any]:
    jobs = workdir / "short.jsonl"
    if not jobs.exists():
        bench_throughput(workdir, [], [])
    config = (
        '[backends.local]\nkind = "llamacpp"\nmax_tokens = 256\nworkers = 2\n'
        '[routes]\n1 = ["local"]\n2 = ["local"]\n3 = ["local"]\n'
    )
    return tierline_run(jobs, workdir, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        choices=["build", "throughput", "readme", "overhead", "rss"],
        action="append",
        help="run only these measurements (repeatable)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        action="append",
        default=[],
        help="also run the 32 jobs on 1 worker with this `parallel` (repeatable)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        action="append",
        default=[],
        help="also run the 32 jobs with this many workers (repeatable)",
    )
    parser.add_argument("--model", help="a GGUF file for `build` (default: the embedded model)")
    args = parser.parse_args()
    global MODEL
    MODEL = args.model
    chosen = args.only or ["build", "throughput", "readme", "overhead", "rss"]
    report: dict[str, Any] = {"threads": THREADS, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        workdir = Path(tmp)
        for name in chosen:
            print(f"# {name} ...", file=sys.stderr, flush=True)
            if name == "build":
                report["build"] = bench_build()
            elif name == "throughput":
                report["throughput"] = bench_throughput(workdir, args.parallel, args.workers)
            elif name == "readme":
                report["readme"] = bench_readme(workdir)
            elif name == "overhead":
                report["overhead"] = bench_overhead()
            elif name == "rss":
                report["rss_2_workers"] = bench_rss(workdir)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
