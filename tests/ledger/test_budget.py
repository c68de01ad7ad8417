"""`--max-cost`: reservations keep spend under the cap, however many calls are in flight."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierline.dispatch.base import Completion, Request
from tierline.jobs import Result, Usage, jobs_from_lines
from tierline.ledger.budget import Budget
from tierline.run import run_jobs
from tierline.testing import FunctionBackend
from tierline.tiering.pipeline import Tierer

from .conftest import make_config

calls = st.lists(
    st.tuples(st.integers(0, 5_000), st.floats(0, 1), st.integers(0, 5)), min_size=1, max_size=80
)


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(0, 50_000), jobs=calls)
def test_budget_is_never_exceeded_under_concurrency(
    cap: int, jobs: list[tuple[int, float, int]]
) -> None:
    """Many concurrent calls, each spending at most its reservation: spent + reserved never
    passes the cap, and a call is refused only when it could not fit with nothing in flight."""
    budget = Budget(cap)
    violations: list[str] = []

    async def call(worst: int, share: float, yields: int) -> None:
        hold = await budget.reserve(worst)
        if hold is None:
            if budget.spent_micros + worst <= cap:
                violations.append(f"refused {worst} with {budget.spent_micros} spent")
            return
        for _ in range(yields):  # other calls reserve and settle meanwhile
            await asyncio.sleep(0)
        if budget.spent_micros + budget.reserved_micros > cap:
            violations.append("over the cap while in flight")
        budget.settle(hold, int(worst * share))

    async def main() -> None:
        await asyncio.gather(*(call(*job) for job in jobs))

    asyncio.run(main())
    assert violations == []
    assert budget.spent_micros <= cap
    assert budget.reserved_micros == 0


async def test_run_with_max_cost_never_spends_past_it() -> None:
    """A real run loop (FunctionBackend, 200 jobs, 64 in flight, random usage within max_tokens)
    spends at most --max-cost; jobs left out get `skipped_budget` and the run exits 3."""
    rng = random.Random(7)
    config = make_config(
        {
            "api": {
                "kind": "openai",
                "model": "m",
                "max_concurrency": 64,
                "price": {"input_per_mtok": 1, "output_per_mtok": 4},
            }
        }
    )

    async def answer(request: Request) -> Completion:
        await asyncio.sleep(rng.random() / 100)
        usage = Usage(
            input_tokens=rng.randint(1, 40), output_tokens=rng.randint(1, request.max_tokens)
        )
        return Completion("ok", "stop", usage, "m")

    lines = [
        f'{{"id": "j{i}", "prompt": "say something {i}", "max_tokens": 500}}' for i in range(200)
    ]
    results: list[Result] = []
    budget = Budget(100_000)  # $0.10; each job may cost up to ~2,100 micro-$
    summary = await run_jobs(
        jobs_from_lines(lines),
        config=config,
        tierer=Tierer.from_config(config.tiering),
        sink=results.append,
        backends={"api": FunctionBackend(answer, name="api", model="m")},
        budget=budget,
    )
    spent = sum(round((r.cost_usd or 0) * 1e6) for r in results)
    skipped = [r for r in results if r.status == "skipped_budget"]
    assert len(results) == 200
    assert spent == budget.spent_micros <= 100_000
    assert skipped and all(r.error and r.error["type"] == "budget" for r in skipped)
    assert summary.exit_code == 3


async def test_unknown_price_is_not_sent_under_a_budget() -> None:
    """A route whose model has no known price cannot be bounded: its jobs are skipped, unsent."""
    config = make_config(
        {"gpu": {"kind": "openai-compatible", "model": "q", "base_url": "http://gpu/v1"}}
    )
    backend = FunctionBackend(lambda r: "never", name="gpu", model="q")
    results: list[Result] = []
    await run_jobs(
        jobs_from_lines(['{"id": "a", "prompt": "hi"}']),
        config=config,
        tierer=Tierer.from_config(config.tiering),
        sink=results.append,
        backends={"gpu": backend},
        budget=Budget(1_000_000),
    )
    assert backend.calls == []
    assert results[0].status == "skipped_budget"
    assert results[0].error is not None and "no known price" in results[0].error["message"]


def test_extra_body_n_enters_the_worst_case(tmp_path: Path) -> None:
    """Issue 13: `extra_body = { n = 50 }` made every request bill 50 answers while the budget
    reserved one: $75.81 spent under --max-cost 10. Against a fake vLLM that honours `n`, the
    ledger's total stays under the cap, and the jobs that did not fit are skipped, unsent."""
    from tests.fakes import FakeVLLM
    from tierline.cli import main

    with FakeVLLM(model="m") as server:
        config = tmp_path / "tierline.toml"
        config.write_text(
            f"""
[backends.gpu]
kind = "openai-compatible"
base_url = "{server.base_url}"
model = "m"
extra_body = {{ n = 50 }}
price = {{ input_per_mtok = 1, output_per_mtok = 100 }}
[routes]
1 = ["gpu"]
2 = ["gpu"]
3 = ["gpu"]
""",
            encoding="utf-8",
        )
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text(
            "".join(
                f'{{"id": "j{i}", "prompt": "Say {i}", "max_tokens": 16}}\n' for i in range(40)
            ),
            encoding="utf-8",
        )
        out, ledger = tmp_path / "out.jsonl", tmp_path / "l.db"
        ledger_args = ["--ledger", str(ledger), "--max-cost", "0.5", "-q"]
        code = main(["run", str(jobs), "-o", str(out), "-c", str(config), *ledger_args])
        sent = sum(r.path.endswith("/chat/completions") for r in server.requests)
        billed = [r.body["n"] for r in server.requests if r.path.endswith("/chat/completions")]
    conn = sqlite3.connect(ledger)
    try:
        spent, output = conn.execute(
            "SELECT SUM(cost_nanos), SUM(output_tokens) FROM calls"
        ).fetchone()
    finally:
        conn.close()
    assert code == 3 and 0 < sent < 40 and set(billed) == {50}
    assert output > 16 * sent  # the server did bill the copies
    assert spent <= 500_000_000  # $0.50 in nano-dollars


def test_extra_body_keys_that_cannot_be_bounded_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Overriding max_tokens or sending tools from extra_body is refused when the config is read,
    naming the key; exit 2 before anything is sent."""
    from tierline.cli import main

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "prompt": "x"}\n', encoding="utf-8")
    for extra, words in [
        ("{ max_tokens = 100000 }", "'max_tokens' is set by tierline"),
        ('{ tools = [{ type = "function" }] }', "'tools' is not supported"),
        ("{ n = 0 }", "'n' must be a positive integer"),
    ]:
        config = tmp_path / "bad.toml"
        config.write_text(
            '[backends.gpu]\nkind = "openai-compatible"\nbase_url = "http://127.0.0.1:9/v1"\n'
            f'model = "m"\nextra_body = {extra}\n[routes]\n1 = "gpu"\n2 = "gpu"\n3 = "gpu"\n',
            encoding="utf-8",
        )
        assert main(["run", str(jobs), "-o", str(tmp_path / "o.jsonl"), "-c", str(config)]) == 2
        err = capsys.readouterr().err
        assert words in err and "backends.gpu.extra_body" in err, err
