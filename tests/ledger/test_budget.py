"""`--max-cost`: reservations keep spend under the cap, however many calls are in flight."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tierline.dispatch.base import Completion, Request
from tierline.dispatch.scheduler import run_jobs
from tierline.jobs import Result, Usage, jobs_from_lines
from tierline.ledger.budget import Budget
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
