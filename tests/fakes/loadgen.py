"""A raw aiohttp load generator, to show a fake is not the bottleneck of a benchmark.

``python -m tests.fakes.loadgen --spawn openai --latency-ms 50 -n 5000 -c 256`` (from the repo root)
starts the fake in its own process, sends ``-n`` chat completions at concurrency ``-c`` from
this one, and writes one JSON line: requests/s, latency percentiles, errors, CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[2]  # tests/fakes/ -> the checkout


async def run_load(
    base_url: str, requests: int, concurrency: int, model: str = "gpt-4o-mini"
) -> dict[str, Any]:
    """Send ``requests`` chat completions to ``base_url`` (ending in /v1), ``concurrency`` at a time."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"Authorization": "Bearer sk-load", "Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for n in counter:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"job {n}"}],
                "max_tokens": 32,
            }
            started = time.perf_counter()
            try:
                async with session.post(
                    f"{base_url}/chat/completions", json=body, headers=headers
                ) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    wall = time.perf_counter() - wall0
    latencies.sort()
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(wall, 3),
        "req_per_s": round(requests / wall, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "errors": errors,
        "client_cpu_s": round(time.process_time() - cpu0, 3),
    }


def spawn(
    kind: str, latency_ms: float, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m tests.fakes KIND`` and return it with its base URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes",
            kind,
            "--latency-ms",
            str(latency_ms),
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,  # `-m tests.fakes` imports from the repo root
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.loadgen", description=__doc__)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="base URL of a running fake (ending in /v1)")
    target.add_argument("--spawn", metavar="KIND", help="start this fake in a subprocess")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("-n", "--requests", type=int, default=5000)
    parser.add_argument("-c", "--concurrency", type=int, default=256)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--uvloop", action="store_true", help="run this client on uvloop")
    args = parser.parse_args(argv)
    proc = None
    url = args.url
    if args.spawn:
        proc, url = spawn(
            args.spawn, args.latency_ms, ["--model", args.model] if args.spawn == "vllm" else []
        )
    try:
        cpu_before = _child_cpu(proc)
        coro = run_load(url, args.requests, args.concurrency, args.model)
        if args.uvloop:
            import uvloop

            result = uvloop.run(coro)
        else:
            result = asyncio.run(coro)
        if proc is not None:
            result["server_cpu_s"] = round(_child_cpu(proc) - cpu_before, 3)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["errors"] == 0 else 1


def _child_cpu(proc: subprocess.Popen[str] | None) -> float:
    if proc is None:
        return 0.0
    try:
        with open(f"/proc/{proc.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


if __name__ == "__main__":
    sys.exit(main())
