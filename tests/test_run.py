"""The run loop with fake backends: one result per job, fallback, retries and the ledger."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from tierline.config import config_from_mapping
from tierline.errors import BackendConnectionError, BackendStatusError, BackendUnavailable
from tierline.jobs import Job, Result, jobs_from_lines
from tierline.ledger.store import Ledger
from tierline.run import dispatch_chunk, run_jobs
from tierline.run import loop as run_loop
from tierline.testing import FakeBackend, FunctionBackend
from tierline.tiering.pipeline import Tierer
from tierline.tiering.vote import TierVote

CONFIG = config_from_mapping(
    {
        "backends": {
            "small": {"kind": "llamacpp", "max_attempts": 3},
            "big": {"kind": "llamacpp", "max_attempts": 3},
        },
        "routes": {"1": ["small"], "2": ["small", "big"], "3": ["big"]},
    },
    origin="test",
)

LINES = [
    '{"id": "a", "prompt": "Summarize: the cat sat.", "tier": 1}',
    '{"id": "b", "prompt": "Write a Python function to merge intervals.", "tier": 2}',
    "{not json",
    '{"id": "c", "prompt": "Prove there are infinitely many primes.", "tier": 3}',
    '{"id": "a", "prompt": "duplicate"}',
]


async def run(
    lines: list[str], small: FakeBackend, big: FakeBackend, ledger: Ledger | None = None
) -> tuple[list[Result], object]:
    results: list[Result] = []
    run_id = (
        ledger.start_run(command="test", config_origin="test", inputs=["t"]) if ledger else None
    )
    summary = await run_jobs(
        jobs_from_lines(lines, source="t.jsonl"),
        config=CONFIG,
        tierer=Tierer.from_config(CONFIG.tiering),
        sink=results.append,
        ledger=ledger,
        run_id=run_id,
        backends={"small": small, "big": big},
    )
    return results, summary


async def test_one_result_per_input_line() -> None:
    """Good jobs run on their tier's first backend; bad lines become errors in place."""
    small, big = FakeBackend("small"), FakeBackend("big")
    results, summary = await run(LINES, small, big)
    by_line = {r.line: r for r in results}
    assert sorted(by_line) == [1, 2, 3, 4, 5]
    assert [by_line[n].status for n in (1, 2, 3, 4, 5)] == ["ok", "ok", "invalid", "ok", "invalid"]
    assert (by_line[1].backend, by_line[2].backend, by_line[4].backend) == ("small", "small", "big")
    assert by_line[1].output == "echo: Summarize: the cat sat."
    assert "t.jsonl:3" in by_line[3].error["message"]  # type: ignore[index]
    assert "duplicate id 'a'" in by_line[5].error["message"]  # type: ignore[index]
    assert summary.tally.failed == 2 and int(summary.exit_code) == 1  # type: ignore[attr-defined]
    assert len(small.calls) == 2 and len(big.calls) == 1


async def test_unavailable_backend_falls_back_and_says_so() -> None:
    """A backend that cannot serve hands the job to the next one; the route shows both."""
    small = FakeBackend("small").enqueue(BackendUnavailable("no key for small"))
    big = FakeBackend("big")
    results, summary = await run([LINES[1]], small, big)
    [result] = results
    assert result.status == "ok" and result.backend == "big"
    assert [(h.backend, h.status) for h in result.route] == [
        ("small", "unavailable"),
        ("big", "ok"),
    ]
    assert summary.tally.fallbacks == 1  # type: ignore[attr-defined]


async def test_a_single_backend_route_has_no_fallbacks_to_report() -> None:
    """A job whose only backend is unavailable failed; it did not move to another backend, so
    the summary's "fallbacks: N moved to the next backend" does not count it (issue 13)."""
    small = FakeBackend("small").enqueue(BackendUnavailable("no key for small"))
    results, summary = await run([LINES[0]], small, FakeBackend("big"))
    assert [h.status for h in results[0].route] == ["unavailable"]
    assert summary.tally.fallbacks == 0  # type: ignore[attr-defined]


async def test_retryable_errors_are_retried_then_succeed() -> None:
    """A 429 with a short Retry-After is retried on the same backend."""
    small = FakeBackend("small").enqueue(
        BackendStatusError("slow down", status_code=429, retry_after=0.01), "fine"
    )
    results, _ = await run([LINES[0]], small, FakeBackend("big"))
    assert results[0].status == "ok" and results[0].output == "fine" and results[0].attempts == 2


async def test_permanent_error_fails_the_job_without_fallback() -> None:
    """A 400 is the job's fault: no retry, no fallback, an error result naming the backend."""
    small = FakeBackend("small").enqueue(BackendStatusError("bad request", status_code=400))
    big = FakeBackend("big")
    results, _ = await run([LINES[1]], small, big)
    assert results[0].status == "error" and results[0].attempts == 1
    assert "bad request" in results[0].error["message"] and big.calls == []  # type: ignore[index]


async def test_dead_backend_exhausts_retries_then_falls_back() -> None:
    """Connection failures on every attempt make the next backend take the job."""
    refused = [BackendConnectionError("refused", retry_after=0.001)] * 3
    small = FakeBackend("small").enqueue(*refused)
    results, _ = await run([LINES[1]], small, FakeBackend("big"))
    assert results[0].status == "ok" and results[0].backend == "big" and results[0].attempts == 4


async def test_ledger_has_a_row_per_call(tmp_path: Path) -> None:
    """Each dispatched call is a ledger row; invalid lines cost nothing and make none."""
    with Ledger(tmp_path / "l.db") as ledger:
        results, _ = await run(LINES, FakeBackend("small"), FakeBackend("big"), ledger)
    rows = (
        sqlite3.connect(tmp_path / "l.db")
        .execute(
            "SELECT job_id, backend, status, input_tokens, output_tokens FROM calls ORDER BY job_id"
        )
        .fetchall()
    )
    assert [r[:3] for r in rows] == [("a", "small", "ok"), ("b", "small", "ok"), ("c", "big", "ok")]
    ok = {r.id: r for r in results if r.status == "ok"}
    assert all(
        row[3] == ok[row[0]].usage.input_tokens and row[4] == ok[row[0]].usage.output_tokens
        for row in rows
    )


async def test_input_is_read_only_as_slots_free_up() -> None:
    """README/docs/dispatch.md "memory flat": jobs held at once never exceed the 2 x
    sum(max_concurrency) in-flight slots plus the tiering read-ahead (a queue of TIER_CHUNK, a
    chunk being sent, the one read and waiting for room), whatever the input's size."""
    window = 2 * sum(b.max_concurrency for b in CONFIG.backends.values())
    pulled, results, held = 0, [], []

    def source() -> object:
        nonlocal pulled
        lines = [f'{{"id": "j{i}", "prompt": "Summarize: {i}", "tier": 1}}' for i in range(2000)]
        for item in jobs_from_lines(lines):
            pulled += 1
            yield item

    async def answer(request: object) -> str:
        held.append(pulled - len(results))
        await asyncio.sleep(0)
        return "ok"

    summary = await run_jobs(
        source(),  # type: ignore[arg-type]
        config=CONFIG,
        tierer=Tierer.from_config(CONFIG.tiering),
        sink=results.append,
        backends={"small": FunctionBackend(answer), "big": FunctionBackend(answer)},
    )
    assert summary.tally.jobs == len(results) == 2000
    ahead = 2 * run_loop.TIER_CHUNK + 1
    assert window < max(held) <= window + ahead < 2000, max(held)


async def test_tiering_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow tierer (a judge, a large classifier) does not stall the calls in flight: tiering
    job b blocks its thread until job a's answer is in, which only an event loop left free to
    run a's call can deliver (tiering on the loop would wait out the timeout instead)."""
    monkeypatch.setattr(run_loop, "TIER_CHUNK", 1)  # a and b in chunks of their own
    a_answered = threading.Event()
    waited: list[bool] = []

    class SlowTierer(Tierer):
        def tier_batch(self, jobs: Sequence[Job]) -> list[TierVote]:
            if any(job.id == "b" for job in jobs):
                waited.append(a_answered.wait(timeout=30))
            return super().tier_batch(jobs)

    def sink(result: Result) -> None:
        results.append(result)
        if result.id == "a":
            a_answered.set()

    results: list[Result] = []
    lines = ['{"id": "a", "prompt": "Summarize: x", "tier": 1}', '{"id": "b", "prompt": "y"}']
    await run_jobs(
        jobs_from_lines(lines),
        config=CONFIG,
        tierer=SlowTierer.from_config(CONFIG.tiering),
        sink=sink,
        backends={"small": FakeBackend("small", delay_s=0.01), "big": FakeBackend("big")},
    )
    assert waited == [True]
    assert [r.id for r in results] == ["a", "b"] and {r.status for r in results} == {"ok"}


def test_the_run_package_exports_its_stable_api() -> None:
    """`tierline.run` exports exactly the entry points other engines build on (the Ray engine
    calls `dispatch_chunk`), each one importable by name."""
    import tierline.run

    assert set(tierline.run.__all__) == {
        "dispatch_chunk",
        "ResultSink",
        "run_files",
        "run_jobs",
        "RunSummary",
        "Sink",
        "Tally",
        "TIER_CHUNK",
    }
    for name in tierline.run.__all__:
        assert getattr(tierline.run, name) is not None


async def test_dispatch_chunk_yields_one_result_per_item() -> None:
    """The chunk entry point yields a typed Result per input item (bad lines included) and
    records the calls in the ledger it is given."""
    small, big = FakeBackend("small"), FakeBackend("big")
    with Ledger(Path(":memory:")) as ledger:
        run_id = ledger.start_run(command="chunk", config_origin="test", inputs=["t"])
        results = [
            r
            async for r in dispatch_chunk(
                jobs_from_lines(LINES, source="t.jsonl"),
                CONFIG,
                ledger=ledger,
                run_id=run_id,
                backends={"small": small, "big": big},
            )
        ]
        calls = ledger.conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    assert sorted(r.line for r in results) == [1, 2, 3, 4, 5]
    assert {r.id: r.status for r in results if r.status == "ok"} == {
        "a": "ok",
        "b": "ok",
        "c": "ok",
    }
    assert calls == 3 and len(small.calls) + len(big.calls) == 3


async def test_leaving_dispatch_chunk_early_cancels_and_closes() -> None:
    """A caller that stops iterating gets the calls in flight cancelled and the backends
    closed before the iterator is done."""
    small, big = FakeBackend("small", delay_s=5), FakeBackend("big", delay_s=5)
    lines = [f'{{"id": "j{i}", "prompt": "Summarize: {i}", "tier": 1}}' for i in range(10)]
    chunk = dispatch_chunk(
        jobs_from_lines([*lines, "{not json"]), CONFIG, backends={"small": small, "big": big}
    )
    async for result in chunk:  # the bad line is answered at once; the jobs wait 5 s
        assert result.status == "invalid"
        break
    await chunk.aclose()
    assert small.closed and big.closed
