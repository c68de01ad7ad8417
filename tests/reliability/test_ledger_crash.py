"""The ledger after `kill -9`: write-ahead of the results, so it is never behind what the server
answered by more than what was in flight at each kill (docs/reliability.md, docs/costs.md)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.fakes import FakeVLLM
from tierline.jobs import Usage
from tierline.ledger.store import CallRecord, Ledger

from .conftest import jobs_file, read_results
from .procs import complete_results, start_run, vllm_config, wait_for_lines

JOBS = 600
CONCURRENCY = 8
WINDOW = 2 * CONCURRENCY  # the scheduler's in-flight window: twice the backends' concurrency
KILLS = 3


class CountingVLLM(FakeVLLM):
    """A fake vLLM that counts the completions it answered (HTTP 200 with a body)."""

    answered = 0

    async def handle_chat(self, request: web.Request) -> web.Response:
        response = await super().handle_chat(request)
        if response.status == 200:
            self.answered += 1
        return response


@pytest.fixture
def vllm() -> Iterator[CountingVLLM]:
    with CountingVLLM(model="m", latency_ms=10) as server:
        yield server


def ledger_calls(path: Path) -> tuple[int, int]:
    """(calls answered "ok", runs) in the ledger file."""
    conn = sqlite3.connect(path)
    try:
        ok = conn.execute("SELECT COUNT(*) FROM calls WHERE status = 'ok'").fetchone()[0]
        runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        conn.close()
    return int(ok), int(runs)


def answered_jobs(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT job_id FROM calls WHERE status = 'ok'")}
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkills_never_leave_the_ledger_behind_the_answers(
    tmp_path: Path, vllm: CountingVLLM
) -> None:
    """Three SIGKILLs at 1/4, 1/2 and 3/4 of the jobs, then a resume to the end: every job has
    one result, and ledger calls >= server answers - KILLS x the in-flight window.

    Before write-ahead the ledger buffered 256 rows or 1 s: each kill lost up to a second of
    answered calls (hundreds here), whose results were kept and never redone."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", JOBS)
    config = vllm_config(tmp_path / "tierline.toml", vllm, max_concurrency=CONCURRENCY)
    out, ledger = tmp_path / "out.jsonl", tmp_path / "ledger.db"
    args = [str(jobs), "-o", str(out), "-c", str(config), "--ledger", str(ledger), "-q"]
    partial = out.with_name(out.name + ".partial")
    for k in range(1, KILLS + 1):
        proc = start_run(args, tmp_path / "home")
        wait_for_lines(partial, JOBS * k // (KILLS + 1), proc)
        proc.kill()
        proc.communicate(timeout=10)
        ok, _ = ledger_calls(ledger)
        assert ok >= vllm.answered - k * WINDOW, (k, ok, vllm.answered)
        # write-ahead: every result kept in the partial file has its call in the ledger
        kept = {r["id"] for r in complete_results(partial)}
        assert kept and not kept - answered_jobs(ledger), sorted(kept - answered_jobs(ledger))[:5]
    proc = start_run(args, tmp_path / "home")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    ids = [r["id"] for r in read_results(out)]
    assert len(ids) == JOBS and set(ids) == {f"j{i}" for i in range(JOBS)}
    ok, runs = ledger_calls(ledger)
    assert runs == KILLS + 1
    assert vllm.answered - KILLS * WINDOW <= ok <= vllm.answered, (ok, vllm.answered)


def call() -> CallRecord:
    return CallRecord("j", 1, "b", "m", "ok", Usage(3, 4), 12, "config", 0.1)


def committed(path: Path) -> int:
    """Rows another process would see."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    finally:
        conn.close()


async def test_a_lone_call_is_committed_without_waiting_for_traffic(tmp_path: Path) -> None:
    """The 1-second flush used to run only when the next call was recorded: an idle run kept
    its last rows in memory. Now one call is committed by a timer, with nothing else going on."""
    path = tmp_path / "l.db"
    with Ledger(path) as ledger:
        run = ledger.start_run(command="run", config_origin="x", inputs=["-"])
        ledger.record_call(run, call())
        for _ in range(500):  # bounded: fails rather than hangs
            if committed(path) == 1:
                break
            await asyncio.sleep(0.01)
        assert committed(path) == 1


async def test_durable_returns_once_recorded_calls_are_committed(tmp_path: Path) -> None:
    """`durable()` is the write-ahead point the scheduler awaits before writing a result."""
    path = tmp_path / "l.db"
    with Ledger(path) as ledger:
        run = ledger.start_run(command="run", config_origin="x", inputs=["-"])
        for _ in range(3):
            ledger.record_call(run, call())
        assert committed(path) == 0
        await ledger.durable()
        assert committed(path) == 3


def test_the_results_file_syncs_the_ledger_first(tmp_path: Path) -> None:
    """Against a power cut: before the results file is fsynced, the ledger commits and fsyncs
    its calls, so a synced result never has calls the cut could take back."""
    from tierline.config import load_config
    from tierline.resume import Journal

    path = tmp_path / "l.db"
    with Ledger(path) as ledger, Journal(str(tmp_path / "out.jsonl"), load_config()) as journal:
        run = ledger.start_run(command="run", config_origin="x", inputs=["-"])
        journal.before_sync = ledger.sync
        ledger.record_call(run, call())
        ledger.record_call(run, call())
        assert committed(path) == 0
        journal.sync()
        assert committed(path) == 2
