"""Packing jobs into provider batches: how many batches, how big, how fast (docs/batches.md).

    python benchmarks/bench_batch_pack.py               # 120,000 jobs, ~1.1 KB and ~5.4 KB prompts
    python benchmarks/bench_batch_pack.py --jobs 20000

Each job goes through what `tierline run` does for a batched backend (the request body of the
sync backend, the provider's batch line, the packer at the provider's real limits); nothing is
sent. Prints, per provider and prompt size, the batches' request counts and sizes (decimal MB,
as the limits are counted) and the time taken.
"""

from __future__ import annotations

import argparse
import os
import time

from tierline.config import config_from_mapping
from tierline.dispatch.base import Request
from tierline.dispatch.batch.packing import Packer
from tierline.dispatch.batch.providers import make_provider
from tierline.jobs import Message

BACKENDS = {
    "OpenAI": {"kind": "openai", "model": "gpt-4o-mini", "mode": "batch"},
    "Anthropic": {"kind": "anthropic", "model": "claude-sonnet-4-5", "mode": "batch"},
}


def prompt(i: int, size: int) -> str:
    words = f"ticket {i}: the printer on floor {i % 7} is jammed again and nobody can print. "
    return ("Summarize: " + words * (size // len(words) + 1))[:size]


def pack(provider_name: str, jobs: int, size: int) -> tuple[list[tuple[int, int]], float]:
    """[(requests, bytes)] per batch and the seconds taken."""
    config = config_from_mapping(
        {"backends": {"b": BACKENDS[provider_name]}, "routes": {t: ["b"] for t in "123"}},
        origin="bench",
    )
    provider = make_provider("b", config.backends["b"])
    packer: Packer[str] = Packer(provider.limits, provider.overhead)
    used: set[str] = set()
    batches = []
    started = time.perf_counter()
    for i in range(jobs):
        request = Request(messages=(Message("user", prompt(i, size)),), max_tokens=200)
        body = provider.encode(request)
        custom_id = provider.custom_id(f"job-{i}", used)
        closed = packer.add(custom_id, len(provider.line(custom_id, body)))
        if closed is not None:
            batches.append((len(closed.items), closed.size))
    last = packer.flush()
    if last is not None:
        batches.append((len(last.items), last.size))
    return batches, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=120_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_100, 5_400])
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-used")  # clients are built, not used
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-bench-not-used")
    for size in args.sizes:
        for name in BACKENDS:
            batches, seconds = pack(name, args.jobs, size)
            counts = " / ".join(f"{n:,}" for n, _ in batches)
            sizes = ", ".join(f"{b / 1e6:.1f}" for _, b in batches)
            print(
                f"{args.jobs:,} jobs, ~{size / 1000:.1f} KB prompts, {name}: {len(batches)} "
                f"batches ({counts}) of {sizes} MB in {seconds:.1f} s"
            )


if __name__ == "__main__":
    main()
