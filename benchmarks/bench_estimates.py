"""How good `tierline plan`'s token estimates are, and how busy time adds up, on a real run.

    python benchmarks/bench_estimates.py                     # examples/jobs.jsonl on the embedded model
    python benchmarks/bench_estimates.py --markdown          # the tables of docs/costs.md, as they are

Runs `tierline plan JOBS --json` and then `tierline run JOBS` on the embedded SmolLM2 model (the
default config, no API key; about 3 minutes of 2 CPU cores for the 30 example jobs) with its own
ledger, and compares per job what the plan estimated with what the model reported. It prints:

* the estimate table of docs/costs.md ("How good the estimates are") and README's "within X%
  (input) and Y% (output)";
* the busy-time figures of docs/costs.md ("Self-hosted models: busy time"): the calls' busy
  shares against the run's duration, and their latencies (queueing for the model included);
* with `--corpus FILE...` (JSONL with a `prompt` each, e.g. tierline/tiering/data/*.jsonl), the
  text-only estimate against SmolLM2's own tokenizer, prompt by prompt, next to chars/4.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from tierline.config import embedded_default
from tierline.jobs import Job, read_jobs
from tierline.ledger.estimate import (
    estimate_input_tokens,
    estimate_output_tokens,
    estimate_text_tokens,
)

ROOT = Path(__file__).resolve().parent.parent


def tierline(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tierline", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True)


def estimates(path: Path) -> dict[str, dict[str, float]]:
    """Per job id: the plan's input and output estimate, and chars/4 of the text."""
    defaults = embedded_default().defaults
    out = {}
    for item in read_jobs([str(path)]):
        if not isinstance(item, Job):
            continue
        text = [item.system] if item.system else []
        text += [m.content for m in item.messages]
        out[item.id] = {
            "input": estimate_input_tokens(item, in_process=True),
            "chars4": sum(len(t) for t in text) / 4,
            "output": estimate_output_tokens(item, item.max_tokens or defaults.max_tokens),
            "max": item.max_tokens or defaults.max_tokens,
            "task": item.task or "-",
        }
    return out


def corpus_lines(paths: list[str]) -> list[str]:
    """The corpus comparison: word-piece estimate and chars/4 against SmolLM2's tokenizer."""
    import llama_cpp

    from tierline.dispatch.llamacpp import default_model_path

    vocab = llama_cpp.Llama(str(default_model_path()), vocab_only=True, verbose=False)
    prompts = [
        json.loads(line)["prompt"]
        for path in paths
        for line in Path(path).read_bytes().splitlines()
        if line.strip()
    ]
    real = [len(vocab.tokenize(p.encode(), add_bos=False, special=False)) for p in prompts]
    est = [estimate_text_tokens(p) for p in prompts]
    c4 = [len(p) / 4 for p in prompts]
    pairs, pairs4 = list(zip(est, real, strict=True)), list(zip(c4, real, strict=True))
    return [
        f"corpus: {len(prompts):,} prompts (SmolLM2's tokenizer, text only): word-piece "
        f"{error(sum(est), sum(real)):+.1f}% in total, median per prompt {per_job(pairs)[0]:.0f}%; "
        f"chars/4 {error(sum(c4), sum(real)):+.1f}%, median {per_job(pairs4)[0]:.0f}%",
    ]


def error(est: float, act: float) -> float:
    return (est - act) / act * 100


def per_job(pairs: list[tuple[float, float]]) -> tuple[float, float, int]:
    """Median and worst absolute per-job error (%), and the index of the worst."""
    errors = [abs(error(e, a)) for e, a in pairs if a]
    worst = max(range(len(errors)), key=errors.__getitem__)
    return statistics.median(errors), errors[worst], worst


def ratio(ids: list[str], est: dict[str, Any], actual: dict[str, Any], task: str) -> float:
    mine = [i for i in ids if est[i]["task"] == task]
    return sum(actual[i][2] for i in mine) / sum(est[i]["max"] for i in mine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", nargs="?", default=str(ROOT / "examples" / "jobs.jsonl"))
    parser.add_argument("--markdown", action="store_true", help="print the docs' tables only")
    parser.add_argument("--corpus", nargs="+", default=[], help="JSONL files of prompts")
    args = parser.parse_args()
    jobs = Path(args.jobs)
    plan = json.loads(tierline("plan", str(jobs), "--json").stdout)["totals"]
    est = estimates(jobs)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "l.db"
        tierline(
            "run", str(jobs), "-o", str(Path(tmp) / "out.jsonl"), "--ledger", str(ledger), "-q"
        )
        with sqlite3.connect(ledger) as db:
            calls = db.execute(
                "SELECT job_id, input_tokens, output_tokens, busy_s, latency_s, baseline_nanos "
                "FROM calls"
            ).fetchall()
            started, finished = db.execute("SELECT started_at, finished_at FROM runs").fetchone()
    actual = {c[0]: c for c in calls}
    ids = [i for i in est if i in actual]
    act_in, act_out = sum(actual[i][1] for i in ids), sum(actual[i][2] for i in ids)
    est_in, est_out = sum(est[i]["input"] for i in ids), sum(est[i]["output"] for i in ids)
    chars4 = sum(est[i]["chars4"] for i in ids)
    med_in, worst_in, worst_i = per_job([(est[i]["input"], actual[i][1]) for i in ids])
    med_c4, _, _ = per_job([(est[i]["chars4"], actual[i][1]) for i in ids])
    med_out, _, _ = per_job([(est[i]["output"], actual[i][2]) for i in ids])
    baseline = sum(c[5] or 0 for c in calls) / 1e9
    run_s = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    busy, latency = sum(c[3] or 0 for c in calls), sum(c[4] for c in calls)
    lines = [
        f"{len(ids)} jobs of {jobs.name}; plan totals {plan['input_tokens']:,} in / "
        f"{plan['output_tokens']:,} out",
        "",
        "| quantity | estimated | actual | error |",
        "|---|---|---|---|",
        f"| input tokens, total | {est_in:,} | {act_in:,} | {error(est_in, act_in):+.1f}% "
        f"(median per job {med_in:.1f}%, worst {worst_in:.0f}% on {ids[worst_i]}) |",
        f"| input tokens by chars/4 (text only) | {chars4:,.0f} | {act_in:,} | "
        f"{error(chars4, act_in):+.1f}% (median per job {med_c4:.0f}%) |",
        f"| output tokens, total | {est_out:,} | {act_out:,} | {error(est_out, act_out):+.1f}% "
        f"(median per job {med_out:.0f}%) |",
        f"| baseline cost ({embedded_default().baseline.model}) | "
        f"${plan['baseline_micros'] / 1e6:.4f} | ${baseline:.4f} | "
        f"{error(plan['baseline_micros'] / 1e6, baseline):+.1f}% |",
        "",
        f"README: within {abs(error(est_in, act_in)):.1f}% (input) and "
        f"{abs(error(est_out, act_out)):.1f}% (output)",
        "",
        f"output: ran to max_tokens on {sum(actual[i][2] >= est[i]['max'] for i in ids)} of "
        f"{len(ids)} jobs; actual/max by task: "
        + ", ".join(
            f"{task} {ratio(ids, est, actual, task):.2f}"
            for task in sorted({est[i]["task"] for i in ids})
        ),
        "",
        f"busy time: the {len(calls)} calls' shares sum to {busy:.1f} s for a {run_s:.1f} s run, "
        f"while their latencies (queueing included) sum to {latency:.1f} s",
        *(["", *corpus_lines(args.corpus)] if args.corpus else []),
    ]
    if not args.markdown:
        print(f"jobs: {jobs}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
