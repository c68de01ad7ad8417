"""A run's ledger agrees with its results, to the nano-dollar; busy time is shared fairly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tierline.dispatch.base import Completion
from tierline.errors import BackendUnavailable
from tierline.jobs import Result, Usage, jobs_from_lines
from tierline.ledger.accounting import Accountant, CallFacts
from tierline.ledger.busy import BusyMeter
from tierline.ledger.store import Ledger
from tierline.run import run_jobs
from tierline.testing import FakeBackend
from tierline.tiering.pipeline import Tierer

from .conftest import make_config

CONFIG = make_config(
    {
        "cheap": {"kind": "openai", "model": "gpt-4o-mini"},
        "dear": {"kind": "anthropic", "model": "claude-sonnet-4-5"},
        "gpu": {"kind": "openai-compatible", "model": "qwen", "base_url": "http://gpu/v1"},
    },
    routes={"1": ["cheap"], "2": ["gpu", "dear"], "3": ["dear"]},
)


async def run_with_ledger(
    ledger: Ledger, cheap: FakeBackend, dear: FakeBackend, gpu: FakeBackend
) -> list[Result]:
    lines = [
        f'{{"id": "t{t}-{i}", "prompt": "job {i}", "tier": {t}}}'
        for t in (1, 2, 3)
        for i in range(5)
    ]
    run_id = ledger.start_run(command="test", config_origin="test", inputs=["x"])
    results: list[Result] = []
    summary = await run_jobs(
        jobs_from_lines(lines),
        config=CONFIG,
        tierer=Tierer.from_config(CONFIG.tiering),
        sink=results.append,
        ledger=ledger,
        run_id=run_id,
        backends={"cheap": cheap, "dear": dear, "gpu": gpu},
    )
    t = summary.tally
    ledger.finish_run(run_id, jobs=t.jobs, ok=t.by_status["ok"], failed=t.failed, status="ok")
    return results


async def test_ledger_totals_equal_the_sum_of_result_costs(tmp_path: Path) -> None:
    """Summed over a run, the ledger's cost_nanos equal the results' cost_usd exactly, and the
    run row carries the same total and the baseline."""
    usage = Usage(input_tokens=1234, output_tokens=567, cached_tokens=200)
    cheap = FakeBackend("cheap", "gpt-4o-mini").enqueue(
        *[Completion("a", "stop", usage, "gpt-4o-mini")] * 5
    )
    dear = FakeBackend("dear", "claude-sonnet-4-5")
    gpu = FakeBackend("gpu", "qwen").enqueue(*[BackendUnavailable("down")] * 5)  # all fall to dear
    with Ledger(tmp_path / "l.db") as ledger:
        results = await run_with_ledger(ledger, cheap, dear, gpu)
        calls = ledger.conn.execute("SELECT SUM(cost_nanos), COUNT(*) FROM calls").fetchone()
        run = ledger.conn.execute(
            "SELECT cost_nanos, baseline_nanos, unpriced_calls FROM runs"
        ).fetchone()
        hops = ledger.conn.execute("SELECT MAX(hop) FROM calls WHERE job_id LIKE 't2-%'").fetchone()
    result_nanos = sum(round(r.cost_usd * 1e9) for r in results if r.cost_usd is not None)
    assert all(r.status == "ok" and r.cost_usd is not None for r in results)
    assert calls[0] == result_nanos == run[0] > 0
    assert run[1] > run[0]  # the baseline (claude-opus-4-6) is dearer than this mix
    assert run[2] == 0
    assert hops[0] == 2  # tier 2 jobs were answered by the second backend of their route


async def test_unknown_price_is_null_in_ledger_and_result(tmp_path: Path) -> None:
    """A call answered by a model of unknown price: ledger NULL, result null, warning note."""
    cheap, dear, gpu = (
        FakeBackend("cheap", "gpt-4o-mini"),
        FakeBackend("dear", "claude-sonnet-4-5"),
        FakeBackend("gpu", "qwen"),
    )
    with Ledger(tmp_path / "l.db") as ledger:
        results = await run_with_ledger(ledger, cheap, dear, gpu)
        nulls = ledger.conn.execute(
            "SELECT COUNT(*) FROM calls WHERE cost_nanos IS NULL"
        ).fetchone()[0]
        unpriced = ledger.conn.execute("SELECT unpriced_calls FROM runs").fetchone()[0]
    tier2 = [r for r in results if r.tier == 2]
    assert all(r.cost_usd is None for r in tier2)
    assert nulls == unpriced == 5


async def test_two_hundred_cheap_calls_sum_exactly(tmp_path: Path) -> None:
    """Issue 13: 200 gpt-4o-mini calls of 11.925 micro-$ each are $0.002385 in the ledger's
    calls, its run row and its summary, not $0.002400 (whole micro-dollars per call)."""
    from tierline.ledger.reports import Filters, summarize

    usage = Usage(input_tokens=28, output_tokens=13, cached_tokens=1)
    config = make_config({"cheap": {"kind": "openai", "model": "gpt-4o-mini"}})
    cheap = FakeBackend("cheap", "gpt-4o-mini").enqueue(
        *[Completion("a", "stop", usage, "gpt-4o-mini")] * 200
    )
    with Ledger(tmp_path / "l.db") as ledger:
        run_id = ledger.start_run(command="test", config_origin="test", inputs=["x"])
        results: list[Result] = []
        await run_jobs(
            jobs_from_lines([f'{{"id": "j{i}", "prompt": "hi"}}' for i in range(200)]),
            config=config,
            tierer=Tierer.from_config(config.tiering),
            sink=results.append,
            ledger=ledger,
            run_id=run_id,
            backends={"cheap": cheap},
        )
        ledger.finish_run(run_id, jobs=200, ok=200, failed=0, status="ok")
        calls = ledger.conn.execute("SELECT SUM(cost_nanos), COUNT(*) FROM calls").fetchone()
        run = ledger.conn.execute("SELECT cost_nanos FROM runs").fetchone()[0]
        [total] = summarize(ledger.conn, [], Filters())
    assert calls == (2_385_000, 200) and run == 2_385_000
    assert total.as_dict()["cost_usd"] == 0.002385
    assert {r.cost_usd for r in results} == {0.000011925}


def test_busy_time_is_shared_among_concurrent_calls() -> None:
    """Two calls overlapping for 2 s of a 3 s busy period: shares 0.5+1 and 1+0.5 add up to 3."""
    now = [0.0]
    meter = BusyMeter(clock=lambda: now[0])
    a, b = meter.span(), meter.span()
    mark_a = meter._start()  # a alone for 0.5 s
    now[0] = 0.5
    mark_b = meter._start()  # both for 2 s
    now[0] = 2.5
    a.seconds += meter._stop(mark_a)
    now[0] = 3.0  # b alone for 0.5 s
    b.seconds += meter._stop(mark_b)
    assert (a.seconds, b.seconds) == (1.5, 1.5)
    assert meter.busy_s == 3.0


def test_busy_time_of_a_batching_server() -> None:
    """docs/costs.md: 8 requests in flight together for 2 s are 2 busy seconds, 0.25 s each."""
    now = [0.0]
    meter = BusyMeter(clock=lambda: now[0])
    spans = [meter.span() for _ in range(8)]
    marks = [meter._start() for _ in spans]
    now[0] = 2.0
    for span, mark in zip(spans, marks, strict=True):
        span.seconds += meter._stop(mark)
    assert [s.seconds for s in spans] == [0.25] * 8 and meter.busy_s == 2.0


async def test_ledger_rows_name_each_backends_endpoint(tmp_path: Path) -> None:
    """The endpoint column (computed on the dispatch side since the ledger takes neutral call
    facts): a configured base URL, else the API's own."""
    cheap, dear, gpu = (
        FakeBackend("cheap", "gpt-4o-mini"),
        FakeBackend("dear", "claude-sonnet-4-5"),
        FakeBackend("gpu", "qwen"),
    )
    with Ledger(tmp_path / "l.db") as ledger:
        await run_with_ledger(ledger, cheap, dear, gpu)
        rows = ledger.conn.execute("SELECT DISTINCT backend, endpoint FROM calls").fetchall()
    assert dict(rows) == {
        "cheap": "https://api.openai.com/v1",
        "dear": "https://api.anthropic.com",
        "gpu": "http://gpu/v1",
    }


def test_accountant_prices_and_records_neutral_call_facts(tmp_path: Path) -> None:
    """What batch collection and the scheduler both hand the ledger: a batch call is priced at
    the batch rate (half for gpt-4o-mini) and written to the run named; a call that sent
    nothing costs nothing and is not written."""
    config = make_config({"cheap": {"kind": "openai", "model": "gpt-4o-mini"}})
    usage = Usage(input_tokens=1000, output_tokens=500)
    sent = CallFacts("cheap", "gpt-4o-mini", "ok", 1, 0.5, usage, endpoint="https://x/v1")
    with Ledger(tmp_path / "l.db") as ledger:
        first = ledger.start_run(command="test", config_origin="test", inputs=["x"])
        later = ledger.start_run(command="collect", config_origin="test", inputs=["x"])
        accountant = Accountant(config, ledger=ledger, run_id=later)
        sync = accountant.record("j1", 1, [sent])
        batch = accountant.record(
            "j2",
            1,
            [
                replace(sent, status="unavailable", attempts=0, usage=None),
                replace(sent, batch=True),
            ],
            first_hop=3,
            run_id=first,
        )
        ledger.flush()
        rows = ledger.conn.execute(
            "SELECT run_id, job_id, hop, batch, cost_nanos, endpoint FROM calls ORDER BY job_id"
        ).fetchall()
    assert sync.nanos is not None and sync.nanos > 0
    assert batch.nanos is not None and batch.nanos * 2 == sync.nanos
    assert rows == [
        (later, "j1", 1, 0, sync.nanos, "https://x/v1"),
        (first, "j2", 4, 1, batch.nanos, "https://x/v1"),
    ]
    assert accountant.cost_nanos == sync.nanos + batch.nanos
