"""Plan vs actual for self-hosted backends priced by gpu_hour_usd, against fakes that decode.

    python benchmarks/bench_plan.py            # examples/workload.jsonl, examples/configs/hybrid.toml

The example hybrid config runs against fakes on 127.0.0.1 (llama-server, vLLM, OpenAI,
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

import asyncio
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from aiohttp import web

from tierline.cli import main
from tierline.testing.servers import FakeAnthropic, FakeLlamaServer, FakeOpenAI, FakeVLLM, Reply

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-bench-plan-0001"


def length_for(body: Mapping[str, Any]) -> Reply:
    """An answer of 40-100% of max_tokens, the share fixed by the prompt's hash."""
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or 512
    digest = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).digest()
    share = 0.4 + 0.6 * digest[0] / 255
    return Reply(completion_tokens=max(1, round(int(limit) * share)))


class Decoding:
    """Mixin: a request holds its slot for per_request_s + per_token_s * output tokens."""

    per_request_s = 0.0
    per_token_s = 0.0

    async def handle_chat(self, request: web.Request) -> web.Response:
        fake: Any = self
        body = fake.json_body(request)
        if isinstance(body, web.Response):
            return body
        completion = fake.complete(body)
        if isinstance(completion, web.Response):
            return completion
        refused = fake.admit(body, completion)
        if refused is not None:
            return refused
        async with fake.compute():
            await asyncio.sleep(
                self.per_request_s + self.per_token_s * completion.completion_tokens
            )
        response: web.Response = fake.json(fake.chat_payload(completion))
        return response


class LlamaServer(Decoding, FakeLlamaServer):
    per_request_s, per_token_s = 0.020, 0.010


class VLLM(Decoding, FakeVLLM):
    per_request_s, per_token_s = 0.030, 0.010


def fake_config(stack: ExitStack, tmp: Path) -> Path:
    text = (REPO / "examples/configs/hybrid.toml").read_text(encoding="utf-8")
    fakes = {
        "http://127.0.0.1:8080/v1": LlamaServer(n_parallel=8),
        "http://gpu-a:8000/v1": VLLM(model="qwen32b", max_num_seqs=32),
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
            "SELECT SUM(cost_micros), SUM(output_tokens), SUM(busy_s) FROM calls "
            "WHERE run_id = ? AND backend = ?",
            (run, backend),
        ).fetchone()
    return int(row[0] or 0), int(row[1] or 0), float(row[2] or 0)


def compare(tmp: Path, config: str, learn: Path, target: Path, title: str) -> float:
    """Run `learn`, plan `target` from that ledger, run `target`; print and return the worst
    relative error of a gpu_hour_usd backend's planned cost."""
    ledger = tmp / f"{title}.db"
    common = ["-c", config, "--ledger", str(ledger)]
    assert main(["run", str(learn), *common, "-o", str(tmp / "learn.out"), "-q"]) == 0
    plan_out = tmp / "plan.json"
    saved = sys.stdout
    with plan_out.open("w") as sys.stdout:  # type: ignore[assignment]
        assert main(["plan", str(target), *common, "--json"]) == 0
    sys.stdout = saved
    plan = json.loads(plan_out.read_text())
    assert main(["run", str(target), *common, "-o", str(tmp / "target.out"), "-q"]) == 0
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
