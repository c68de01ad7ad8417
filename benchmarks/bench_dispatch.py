"""Dispatch throughput: tierline against minimal raw `AsyncOpenAI` loops, same fake, same run.

    python benchmarks/bench_dispatch.py                 # 5,000 jobs at concurrency 64 and 256
    python benchmarks/bench_dispatch.py --jobs 1000 --concurrency 256
    python benchmarks/bench_dispatch.py --markdown      # docs/dispatch.md's table, as it is

A fake OpenAI-compatible server with a fixed 50 ms latency runs in a separate process
(`python -m tests.fakes openai`). Each contender runs in its own fresh process, so its
CPU time and peak RSS are its own:

* `raw-httpx`: `AsyncOpenAI` on the SDK's default HTTP client (pool sized to the concurrency);
* `raw-aiohttp`: the same loop on the SDK's aiohttp transport (`DefaultAioHttpClient`);
* `tierline`: the real `run_files` path (read JSONL, tier, route, limits, retries, write results
  and the ledger) with an `openai-compatible` backend. Jobs carry their tier, as they do after
  `tierline classify` (`--classify` makes tierline tier them itself: that measures the tiering
  pipeline too, which is not dispatch's cost).

Reported: jobs/s, client CPU seconds per 1,000 jobs (`time.process_time` over the run), peak RSS
(`ru_maxrss`), and tierline's throughput as a share of each raw loop's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("raw-httpx", "raw-aiohttp", "tierline")
MODEL = "gpt-4o-mini"
MAX_TOKENS = 16


def prompt(i: int) -> str:
    return f"Summarize ticket {i}: the printer on floor {i % 7} is jammed again."


async def raw_loop(url: str, jobs: int, concurrency: int, transport: str) -> None:
    import httpx2
    import openai

    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    cls = openai.DefaultAioHttpClient if transport == "aiohttp" else openai.DefaultAsyncHttpxClient
    async with openai.AsyncOpenAI(
        base_url=url, api_key="unused", max_retries=0, http_client=cls(limits=limits)
    ) as client:
        counter = iter(range(jobs))

        async def worker() -> None:
            for i in counter:
                await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": prompt(i)}],
                    max_tokens=MAX_TOKENS,
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def tierline_run(
    url: str, jobs: int, concurrency: int, workdir: Path, classify: bool = False
) -> int:
    from tierline.config import config_from_mapping
    from tierline.jobs import ResultWriter
    from tierline.run import run_files

    inputs = workdir / "jobs.jsonl"
    with inputs.open("w", encoding="utf-8") as fh:
        for i in range(jobs):
            job = {"id": f"j{i}", "prompt": prompt(i), "max_tokens": MAX_TOKENS}
            if not classify:
                job["tier"] = 1  # tiered upstream (`tierline classify | tierline run -`)
            fh.write(json.dumps(job))
            fh.write("\n")
    backend = {
        "kind": "openai-compatible",
        "model": MODEL,
        "base_urls": [url],
        "max_concurrency": concurrency,
        "max_tokens": MAX_TOKENS,
    }
    config = config_from_mapping(
        {"backends": {"fake": backend}, "routes": {"1": "fake", "2": "fake", "3": "fake"}},
        origin="bench",
    )
    writer = ResultWriter(str(workdir / "results.jsonl"))
    try:
        summary = await run_files(
            [str(inputs)], config=config, writer=writer, ledger_path=workdir / "ledger.db"
        )
        writer.commit()
    finally:
        writer.close()
    return int(summary.tally.by_status["ok"])


def worker(mode: str, url: str, jobs: int, concurrency: int, classify: bool) -> dict[str, Any]:
    """One contender, in this process: returns its numbers."""
    try:
        import uvloop  # the fakes use it too; without it the client pays asyncio's own overhead

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    ok = jobs
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if mode == "tierline":
            ok = runner(tierline_run(url, jobs, concurrency, Path(tmp), classify))
        else:
            runner(raw_loop(url, jobs, concurrency, mode.removeprefix("raw-")))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode,
        "concurrency": concurrency,
        "jobs": jobs,
        "ok": ok,
        "seconds": wall,
        "jobs_per_s": jobs / wall,
        "cpu_s_per_1k": cpu / jobs * 1000,
        "peak_rss_mb": rss_kb / 1024,
    }


def start_fake(latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes",
            "openai",
            "--port",
            "0",
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,  # `-m tests.fakes` imports from the repo root
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"fake server did not start: {url!r}")
    return proc, url


def run_one(mode: str, url: str, jobs: int, concurrency: int, classify: bool) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            mode,
            "--url",
            url,
            "--jobs",
            str(jobs),
            "--concurrency",
            str(concurrency),
            *(["--classify"] if classify else []),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TIERLINE_HOME": tempfile.gettempdir()},
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'concurrency':>11} {'mode':<12} {'jobs/s':>8} {'CPU s/1k':>9} {'peak RSS MB':>12} {'ok':>6}"
    ]
    for r in rows:
        lines.append(
            f"{r['concurrency']:>11} {r['mode']:<12} {r['jobs_per_s']:>8.0f} "
            f"{r['cpu_s_per_1k']:>9.2f} {r['peak_rss_mb']:>12.0f} {r['ok']:>6}"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        by = {r["mode"]: r["jobs_per_s"] for r in rows if r["concurrency"] == c}
        if {"tierline", "raw-aiohttp", "raw-httpx"} <= set(by):
            out.append(
                f"concurrency {c}: tierline = {by['tierline'] / by['raw-aiohttp']:.0%} of raw aiohttp, "
                f"{by['tierline'] / by['raw-httpx']:.2f}x raw default client"
            )
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """docs/dispatch.md's throughput table, row for row."""
    lines = [
        "| concurrency | raw default (httpx2) | raw aiohttp | tierline | tierline / aiohttp "
        "| tierline / default |",
        "|---|---|---|---|---|---|",
    ]
    for c in sorted({r["concurrency"] for r in rows}):
        by = {r["mode"]: r for r in rows if r["concurrency"] == c}
        if not {"tierline", "raw-aiohttp", "raw-httpx"} <= set(by):
            continue
        cells = [f"{by[m]['jobs_per_s']:.0f}, {by[m]['cpu_s_per_1k']:.2f}" for m in MODES_ORDER]
        if len(lines) == 2:  # the first row names the units
            cells[0] = cells[0].replace(",", " jobs/s,", 1) + " CPU s/1k"
        t, a, d = (by[m]["jobs_per_s"] for m in ("tierline", "raw-aiohttp", "raw-httpx"))
        lines.append(f"| {c} | {' | '.join(cells)} | {t / a:.0%} | {t / d:.2f}x |")
    rss = [r["peak_rss_mb"] for r in rows if r["mode"] == "tierline"]
    raw = [r["peak_rss_mb"] for r in rows if r["mode"] != "tierline"]
    if rss and raw:
        lines.append("")
        lines.append(
            f"peak RSS: tierline {min(rss):.0f}-{max(rss):.0f} MB, raw loops "
            f"{min(raw):.0f}-{max(raw):.0f} MB"
        )
    return "\n".join(lines)


MODES_ORDER = ("raw-httpx", "raw-aiohttp", "tierline")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    parser.add_argument(
        "--markdown", action="store_true", help="print docs/dispatch.md's table instead"
    )
    parser.add_argument(
        "--classify",
        action="store_true",
        help="let tierline tier each job (default: jobs carry a tier, as after `tierline classify`)",
    )
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.url, args.jobs, args.concurrency[0], args.classify)
        print(json.dumps(result))
        return 0
    rows = []
    for concurrency in args.concurrency:
        for mode in args.modes:
            # A fresh fake per contender: the fake counts requests in a one-minute rate-limit
            # window and says so in x-ratelimit-* headers, which tierline honours (it pauses the
            # backend when the window is used up) and the raw loops ignore. A shared fake would
            # charge each contender for the requests of the ones before it.
            proc, url = start_fake(args.latency_ms)
            try:
                rows.append(run_one(mode, url, args.jobs, concurrency, args.classify))
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            print(table(rows[-1:]).splitlines()[1], file=sys.stderr, flush=True)
    if args.markdown:
        print(markdown(rows))
        return 0
    print(table(rows))
    for line in ratios(rows):
        print(line)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
