"""What a SmolLM2-embedding stage for unsure jobs would cost per job, on this machine.

    nice python benchmarks/tiering_embed_cost.py [--jobs 30] [--batch]

Embeds prompts of the hand-written realistic set (mean-pooled hidden states of the embedded
SmolLM2-135M-Instruct through llama-cpp-python, one thread, as a tiering stage would run
beside the dispatcher) and prints CPU and wall milliseconds per job, after one warm-up call.
The fast classifier runs at tens of thousands of jobs per CPU-second (bench_classify.py), so
this is the number a stage would have to earn back on the share of jobs it sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "tests" / "tiering" / "data" / "realistic-eval.jsonl"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--batch", action="store_true", help="one embed() call for all the jobs")
    args = ap.parse_args(argv)
    from tiering_embed_effect import embedding_model  # beside this file

    texts = [json.loads(x)["prompt"] for x in DATA.read_text().splitlines()][: args.jobs]
    model = embedding_model()
    model.embed(texts[0][:1500])  # warm-up
    tokens = sum(len(model.tokenize(t[:1500].encode())) for t in texts)
    cpu, wall = time.process_time(), time.perf_counter()
    if args.batch:
        model.embed([text[:1500] for text in texts])
    else:
        for text in texts:
            model.embed(text[:1500])  # about the 512-token context
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = len(texts)
    print(
        f"{n} jobs, {tokens / n:.0f} tokens/job{' (batched)' if args.batch else ''}: "
        f"{cpu / n * 1000:.1f} ms cpu/job, {wall / n * 1000:.1f} ms wall/job"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
