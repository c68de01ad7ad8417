"""Plan vs actual for self-hosted backends priced by gpu_hour_usd, against fakes that decode.

    python benchmarks/bench_plan.py            # examples/workload.jsonl, examples/configs/hybrid.toml

The example hybrid config runs against fakes on 127.0.0.1 (in this process; each tierline command
runs in its own, as a user runs them) (llama-server, vLLM, OpenAI,
Anthropic). The two self-hosted fakes behave like decoding servers: each request holds a slot
for a fixed time plus a time per output token (llama-server: 8 slots, 20 ms + 10 ms/token; vLLM:
32 sequences, 30 ms + 10 ms/token), and every fake answers with a length drawn per prompt,
uniformly between 40% and 100% of the job's max_tokens (the plan assumes 60-80% by task).

Two comparisons, each with a fresh ledger: run a job file (the ledger learns each backend's
throughput), `tierline plan` a job file from that ledger, run it, and compare per gpu_hour_usd
backend the planned cost with the cost the ledger recorded for the second run (its measured busy
time x $/GPU-hour), and the output tokens and busy seconds likewise:

* same file: learn from a run of the whole workload, plan and run it again;
* held out: learn from the even lines, plan and run the odd lines (150 jobs, so ~37 on vLLM,
  where a few long answers decide the busy time).

Busy time is wall time: noisy on a loaded machine, hence a benchmark and not a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# The fakes live under tests/ (they do not ship in the wheel): import them from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes import FakeAnthropic, FakeLlamaServer, FakeOpenAI, FakeVLLM, Reply

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-bench-plan-0001"


def length_for(body: Mapping[str, Any]) -> Reply:
    """An answer of 40-100% of max_tokens, the share fixed by the prompt's hash."""
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or 512
    digest = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).digest()
    share = 0.4 + 0.6 * digest[0] / 255
    return Reply(completion_tokens=max(1, round(int(limit) * share)))


def fake_config(stack: ExitStack, tmp: Path) -> Path:
    text = (REPO / "examples/configs/hybrid.toml").read_text(encoding="utf-8")
    fakes = {
        "http://127.0.0.1:8080/v1": FakeLlamaServer(
            n_parallel=8, latency_ms=20, latency_per_token_ms=10
        ),
        "http://gpu-a:8000/v1": FakeVLLM(
            model="qwen32b", max_num_seqs=32, latency_ms=30, latency_per_token_ms=10
        ),
        "https://api.openai.com/v1": FakeOpenAI(api_key=KEY),
        "https://api.anthropic.com": FakeAnthropic(api_key=KEY),
    }
    for url, fake in fakes.items():
        stack.enter_context(fake)
        fake.set_responder(length_for)
        text = text.replace(f'"{url}"', f'"{fake.base_url}"')
    path = tmp / "hybrid-fakes.toml"
    path.write_text(text, encoding="utf-8")
    return path


def actual(ledger: Path, backend: str) -> tuple[int, int, float]:
    """Cost (micro-$), output tokens and busy seconds the newest run recorded on `backend`."""
    with sqlite3.connect(ledger) as conn:
        (run,) = conn.execute("SELECT id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        row = conn.execute(
            "SELECT SUM(cost_nanos) / 1000.0, SUM(output_tokens), SUM(busy_s) FROM calls "
            "WHERE run_id = ? AND backend = ?",
            (run, backend),
        ).fetchone()
    return round(row[0] or 0), int(row[1] or 0), float(row[2] or 0)


def tierline(*args: str) -> str:
    """One tierline command in its own process, as a user runs it (each run pays its own
    start-up, SDK imports included); the fakes serve it from this process. Its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "tierline", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def compare(tmp: Path, config: str, learn: Path, target: Path, title: str) -> float:
    """Run `learn`, plan `target` from that ledger, run `target`; print and return the worst
    relative error of a gpu_hour_usd backend's planned cost."""
    ledger = tmp / f"{title}.db"
    common = ["-c", config, "--ledger", str(ledger)]
    tierline("run", str(learn), *common, "-o", str(tmp / "learn.out"), "-q")
    plan = json.loads(tierline("plan", str(target), *common, "--json"))
    tierline("run", str(target), *common, "-o", str(tmp / "target.out"), "-q")
    print(f"\n{title}")
    print(
        f"{'backend':14} {'planned $':>10} {'actual $':>10} {'error':>7} {'±1 s.e.':>8}"
        f" {'out tok est':>11} {'out tok act':>11} {'busy-s est':>10} {'busy-s act':>10}"
    )
    worst = 0.0
    for row in plan["rows"]:
        if row["gpu_hour_usd"] is None:
            continue
        cost, tokens, busy = actual(ledger, row["backend"])
        error = row["cost_micros"] / cost - 1
        se = (row["cost_error_micros"] or 0) / row["cost_micros"]
        worst = max(worst, abs(error))
        print(
            f"{row['backend']:14} {row['cost_micros'] / 1e6:>10.6f} {cost / 1e6:>10.6f}"
            f" {error:>+7.1%} {se:>8.1%} {row['output_tokens']:>11,} {tokens:>11,}"
            f" {row['busy_s']:>10.2f} {busy:>10.2f}"
        )
    return worst


def main_bench() -> int:
    os.environ["OPENAI_API_KEY"] = os.environ["ANTHROPIC_API_KEY"] = KEY
    workload = REPO / "examples/workload.jsonl"
    lines = workload.read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory() as name, ExitStack() as stack:
        tmp = Path(name)
        os.environ["TIERLINE_HOME"] = str(tmp / "home")
        config = str(fake_config(stack, tmp))
        even, odd = tmp / "even.jsonl", tmp / "odd.jsonl"
        even.write_text("\n".join(lines[0::2]) + "\n", encoding="utf-8")
        odd.write_text("\n".join(lines[1::2]) + "\n", encoding="utf-8")
        same = compare(tmp, config, workload, workload, "same file: learn from a run of it")
        held = compare(tmp, config, even, odd, "held out: learn from the even lines, plan the odd")
    print(f"\nworst |planned/actual - 1|: same file {same:.1%}, held out {held:.1%} (target 15%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_bench())
