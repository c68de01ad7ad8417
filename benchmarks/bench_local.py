"""The local llama.cpp runner against raw llama-cpp-python, same build, same threads, one run.

    nice python benchmarks/bench_local.py                    # every target (several minutes)
    nice python benchmarks/bench_local.py --only throughput  # one target; also: prompt, readme,
                                                             # overhead, rss; build (variants)

It prints its numbers as JSON, then one verdict line per target of issue 12 (MET / NOT MET,
with the ratio against the baseline measured in the same run).

Measured, each against a baseline taken in the same run (this machine is shared and noisy, so
the ratios are what to compare; docs/local.md has the table and the targets):

* `build`: the installed llama-cpp-python build alone, in this process: prompt processing of a
  400-token prompt (tokens/s, after a warm-up) and single-stream generation (64 tokens at
  temperature 0), with the instruction sets the build was compiled for;
* `prompt`: the 400-token prompt on the shipped Q4_1 file and on the file tierline's workers
  load (the embedded model requantized, with flash attention as the workers run it);
* `throughput`: generated tokens/s of `tierline run` on 32 short jobs with the embedded default
  config (the whole command: start-up, model load, tiering, results, ledger) against raw
  single-stream llama-cpp-python over the same 32 prompts on the shipped file
  (`create_chat_completion`: the chat template, then `Llama.__call__`'s loop; model load not
  timed: the raw side's favour), run once with OMP_WAIT_POLICY=ACTIVE and once with PASSIVE,
  the faster being the baseline; also the same ratio without tierline's fixed start-up (a
  one-token run's wall time, subtracted); also CPU
  milliseconds per generated token on both sides (tierline's parent and workers together),
  which a busy machine disturbs far less than wall time; `--parallel N` adds runs at other
  `parallel` values;
* `readme`: wall time of the README's first command, `tierline run examples/jobs.jsonl -o
  out.jsonl` (target < 60 s);
* `overhead`: what the worker process adds to a 1-token job: its latency seen by the backend
  minus the time the worker spent on it from arrival to answer (pipes, JSON, asyncio; mean and
  max of 20 jobs one after the other);
* `quality` (not in the default set): the requantized files (Q8_0, the default, and Q4_0)
  against the shipped Q4_1 file at temperature 0: perplexity of the shipped model's greedy
  answers under each, and top-1 agreement with them;
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
N_JOBS = 32
PP_TARGET = 4 * 199  # tokens/s: 4x the portable build's prompt speed in issue 12
POLICIES = ("ACTIVE", "PASSIVE")  # the raw loop runs with both; its better one is the baseline
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


def tierline_model() -> str:
    """The file tierline's workers load by default: the embedded model, requantized (cached)."""
    import llama_cpp

    from tierline.dispatch.llama_worker import requantized
    from tierline.dispatch.llamacpp import EMBEDDED_REQUANTIZE, cache_dir

    llama_cpp.llama_backend_init()
    return requantized(model_path(), EMBEDDED_REQUANTIZE, str(cache_dir()), llama_cpp)


def bench_build(path: str | None = None, flash_attn: bool = False) -> dict[str, Any]:
    """Raw prompt and generation speed of the installed build, in this process."""
    from llama_cpp import Llama

    path = path or model_path()
    llama = Llama(
        model_path=path,
        n_ctx=1024,
        n_batch=512,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        verbose=False,
        seed=0,
        flash_attn=flash_attn,
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
        "model": os.path.basename(path),
        "flash_attn": flash_attn,
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


def raw_loop_best() -> dict[str, Any]:
    """The raw loop with each OpenMP wait policy (read once, when the library starts: one
    process each); the faster is the baseline, so tierline is compared with the best a plain
    llama-cpp-python loop does here and now, not with a handicapped one."""
    runs = {}
    for policy in POLICIES:
        proc = subprocess.run(
            [sys.executable, __file__, "--raw-loop"],
            env={**os.environ, "OMP_WAIT_POLICY": policy},
            capture_output=True,
            text=True,
            check=True,
        )
        runs[policy] = json.loads(proc.stdout)
    best = max(runs, key=lambda k: runs[k]["tok_s"])
    return {**runs[best], "omp_wait_policy": best, "other": runs}


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
    raw = raw_loop_best()
    one = workdir / "one.jsonl"
    one.write_text(json.dumps({"id": "one", "prompt": "Hi", "max_tokens": 1}) + "\n")
    tierline_run(one, workdir)  # the requantized model into the cache, as after a first run
    out: dict[str, Any] = {
        "raw_llama_call_loop": raw,
        "tierline_default": tierline_run(jobs, workdir),
        # what any run costs before its first token: interpreter, imports, tiering, model load
        "tierline_one_token_job": tierline_run(one, workdir),
    }
    out["ratio_default"] = round(out["tierline_default"]["tok_s"] / raw["tok_s"], 2)
    fixed = out["tierline_one_token_job"]["seconds"]
    busy = max(out["tierline_default"]["seconds"] - fixed, 1e-3)
    out["ratio_without_fixed_cost"] = round(
        out["tierline_default"]["generated"] / busy / raw["tok_s"], 2
    )
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


def bench_prompt() -> dict[str, Any]:
    """The 400-token prompt on the shipped file and on the file tierline loads."""
    shipped = bench_build()
    loaded = bench_build(tierline_model(), flash_attn=True)
    return {"shipped": shipped, "tierline": loaded}


def bench_quality() -> dict[str, Any]:
    """The requantized files against the shipped one at temperature 0: the shipped model's
    greedy answers to the 32 short prompts and the README's jobs, scored token by token under
    each file: perplexity of those answers, and how often the file's own top token is the
    shipped model's (1.0 for the shipped file itself, bar batch-shape rounding)."""
    import math

    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    from tierline.dispatch.llama_worker import chat_formatter, requantized
    from tierline.dispatch.llamacpp import cache_dir

    llama_cpp.llama_backend_init()
    readme = [json.loads(line) for line in (ROOT / "examples" / "jobs.jsonl").open()]
    prompts = short_prompts() + [j["prompt"] for j in readme if isinstance(j.get("prompt"), str)]

    def load(path: str) -> Any:
        return Llama(model_path=path, n_ctx=1024, n_threads=THREADS, verbose=False, logits_all=True)

    shipped = load(model_path())
    # the chat template as the workers (and create_chat_completion) apply it
    template = chat_formatter(shipped.metadata, shipped._model.token_get_text)
    answers = []
    for prompt in prompts:
        out = chat(shipped, prompt, MAX_TOKENS)
        text = template(messages=[{"role": "user", "content": prompt}]).prompt
        head = shipped.tokenize(text.encode(), add_bos=False, special=True)
        tail = shipped.tokenize(out["choices"][0]["message"]["content"].encode(), add_bos=False)
        answers.append((head, tail))

    def score(llama: Any) -> dict[str, Any]:
        nll, agree, n = 0.0, 0, 0
        for head, tail in answers:
            tokens = head + tail
            llama.reset()
            llama.eval(tokens)
            logits = np.asarray(llama.scores[: len(tokens)], dtype=np.float64)
            for i in range(len(head) - 1, len(tokens) - 1):
                row, target = logits[i], tokens[i + 1]
                top = row.max()
                nll += top + math.log(np.exp(row - top).sum()) - row[target]
                agree += int(row.argmax() == target)
                n += 1
        return {
            "perplexity": round(math.exp(nll / n), 3),
            "top1_agreement": round(agree / n, 4),
            "tokens": n,
        }

    out = {"shipped Q4_1": score(shipped)}
    shipped.close()
    for kind in ("Q8_0", "Q4_0"):
        llama = load(requantized(model_path(), kind, str(cache_dir()), llama_cpp))
        out[kind] = score(llama)
        llama.close()
    return out


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


def verdicts(report: dict[str, Any]) -> list[str]:
    """One line per target of issue 12, from this run's numbers."""

    def line(name: str, met: bool, text: str) -> str:
        return f"{name:<11} {'MET    ' if met else 'NOT MET'} {text}"

    out = []
    if "throughput" in report:
        t = report["throughput"]
        raw, mine = t["raw_llama_call_loop"], t["tierline_default"]
        out.append(
            line(
                "throughput",
                t["ratio_default"] >= 3,
                f"tierline run, 32 jobs: {mine['tok_s']} tok/s; raw llama-cpp-python loop "
                f"(best policy {raw['omp_wait_policy']}): {raw['tok_s']} tok/s; "
                f"{t['ratio_default']}x (target >= 3x); without tierline's fixed start-up "
                f"({t['tierline_one_token_job']['seconds']} s): {t['ratio_without_fixed_cost']}x",
            )
        )
    if "readme" in report:
        r = report["readme"]
        out.append(
            line("readme", r["seconds"] < 60, f"{r['seconds']} s for {r['jobs']} jobs (< 60 s)")
        )
    if "prompt" in report:
        p = report["prompt"]
        rate = p["tierline"]["pp_tok_s"]
        out.append(
            line(
                "prompt",
                rate >= PP_TARGET,
                f"{p['tierline']['prompt_tokens']}-token prompt: {rate} tok/s on "
                f"{p['tierline']['model']} ({round(rate / p['shipped']['pp_tok_s'], 2)}x the "
                f"shipped file's {p['shipped']['pp_tok_s']} in this run; target >= {PP_TARGET})",
            )
        )
    if "overhead" in report:
        o = report["overhead"]
        out.append(
            line(
                "overhead",
                o["max_ms"] < 20,
                f"{o['mean_ms']} ms mean, {o['max_ms']} ms max per 1-token job (< 20 ms)",
            )
        )
    if "rss_2_workers" in report:
        r = report["rss_2_workers"]
        out.append(
            line(
                "rss",
                True,
                f"peak {r['peak_rss_mb']} MB with 2 workers (processes: "
                f"{r['per_process_peak_mb']} MB); a report, not a limit",
            )
        )
    return out


def main() -> None:
    if sys.argv[1:] == ["--raw-loop"]:  # a child of raw_loop_best()
        print(json.dumps(raw_loop(short_prompts())))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        choices=["build", "prompt", "throughput", "readme", "overhead", "rss", "quality"],
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
    chosen = args.only or ["prompt", "throughput", "readme", "overhead", "rss"]
    report: dict[str, Any] = {
        "threads": THREADS,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "load_average": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        workdir = Path(tmp)
        for name in chosen:
            print(f"# {name} ...", file=sys.stderr, flush=True)
            if name == "build":
                report["build"] = bench_build()
            elif name == "prompt":
                report["prompt"] = bench_prompt()
            elif name == "quality":
                report["quality"] = bench_quality()
            elif name == "throughput":
                report["throughput"] = bench_throughput(workdir, args.parallel, args.workers)
            elif name == "readme":
                report["readme"] = bench_readme(workdir)
            elif name == "overhead":
                report["overhead"] = bench_overhead()
            elif name == "rss":
                report["rss_2_workers"] = bench_rss(workdir)
    print(json.dumps(report, indent=2))
    for verdict in verdicts(report):
        print(verdict)


if __name__ == "__main__":
    main()
