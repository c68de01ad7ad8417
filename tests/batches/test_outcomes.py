"""What happens to each job when a batch expires, is cancelled, errors per line or fails validation;
packing at the request limit; the ledger's batch-discounted prices."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from tests.fakes import FakeAnthropic, FakeOpenAI
from tierline.config import load_config
from tierline.dispatch.batch import BatchOptions, Limits, providers
from tierline.dispatch.batch.packing import pack
from tierline.errors import ExitCode
from tierline.jobs import Result, ResultWriter
from tierline.run import run_files

from .conftest import batch_ids, read_results, tl, write_config, write_jobs

IDS = [f"job-{n}" for n in range(10)]


def test_expired_batch_keeps_finished_part_and_resubmits_the_rest(
    tmp_path: Path, oai: FakeOpenAI
) -> None:
    """An expired batch's finished lines are kept; the rest error, then go into a new batch."""
    cfg = write_config(tmp_path / "t.toml", openai_url=oai.base_url)
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.PENDING
    [first] = batch_ids(read_results(out))
    oai.expire_batch(first, done_fraction=0.6)
    assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.JOBS_FAILED
    results = read_results(out)
    ok = {r["id"] for r in results if r["status"] == "ok"}
    expired = {r["id"] for r in results if r["status"] == "error"}
    assert len(ok) == 6 and len(expired) == 4 and len(results) == len(IDS)
    assert {r["error"]["type"] for r in results if r["id"] in expired} == {"batch_expired"}
    assert tl("batch", "collect", "--resubmit", "-c", cfg, "--ledger", db) == ExitCode.PENDING
    resubmitted = [r for r in read_results(out) if r["status"] == "pending"]
    assert {r["id"] for r in resubmitted} == expired
    [second] = batch_ids(resubmitted)
    assert second != first
    oai.complete_batch(second)
    assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.OK
    final = {r["id"]: r for r in read_results(out)}
    assert len(final) == len(IDS) and {r["status"] for r in final.values()} == {"ok"}
    for job_id in expired:  # both batches are in the job's route
        route = final[job_id]["route"]
        assert [h["batch_id"] for h in route] == [first, second]
        assert [h["status"] for h in route] == ["error", "ok"]
    second_input = oai.files[oai.batches.jobs[second].obj["input_file_id"]][1]
    assert second_input.count(b"\n") == 4  # only what never ran was sent again


def test_cancelled_batch_keeps_finished_part(tmp_path: Path, ant: FakeAnthropic) -> None:
    """`batch cancel`: the requests that finished before the cancel keep their answers."""
    cfg = write_config(tmp_path / "t.toml", anthropic_url=ant.base_url, to="claude")
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.PENDING
    [batch_id] = batch_ids(read_results(out))
    ant.progress_batch(batch_id, 0.5)
    assert tl("batch", "cancel", "-c", cfg, "--ledger", db) == ExitCode.OK
    assert ant.batches.jobs[batch_id].obj["processing_status"] == "canceling"
    ant.advance_batches()
    assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.JOBS_FAILED
    results = read_results(out)
    statuses = sorted(r["status"] for r in results)
    assert statuses == ["error"] * 5 + ["ok"] * 5
    assert {r["error"]["type"] for r in results if r["error"]} == {"batch_canceled"}


def test_errored_lines_become_error_results_with_the_providers_message(
    tmp_path: Path, oai: FakeOpenAI, ant: FakeAnthropic
) -> None:
    """A line the provider answered with an error is that job's error result; others are ok."""
    oai.script_batch_line(
        "job-3", status=400, message="Invalid value: 'object'.", code="invalid_value"
    )
    ant.script_batch_line("job-3", status=400, message="max_tokens: too large")
    for to, srv in (("gpt", oai), ("claude", ant)):
        cfg = write_config(
            tmp_path / f"{to}.toml", openai_url=oai.base_url, anthropic_url=ant.base_url, to=to
        )
        jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
        out, db = tmp_path / f"{to}.jsonl", tmp_path / f"{to}.db"
        assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.PENDING
        srv.complete_batch(batch_ids(read_results(out))[0])
        assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.JOBS_FAILED
        results = {r["id"]: r for r in read_results(out)}
        bad = results.pop("job-3")
        assert bad["status"] == "error" and bad["error"]["type"] == "backend_error"
        assert ("Invalid value: 'object'." if to == "gpt" else "max_tokens: too large") in bad[
            "error"
        ]["message"]
        assert {r["status"] for r in results.values()} == {"ok"}


def test_validation_failure_names_the_offending_lines(
    tmp_path: Path, oai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch refused at validation fails the lines OpenAI names; the others can be resent."""
    good_line = providers.OpenAIBatches.line

    def line(self: providers.OpenAIBatches, custom_id: str, body: dict[str, object]) -> bytes:
        raw = good_line(self, custom_id, body)
        # A line the provider refuses: the wrong endpoint.
        return (
            raw.replace(b"/v1/chat/completions", b"/v1/embeddings") if custom_id == "job-2" else raw
        )

    monkeypatch.setattr(providers.OpenAIBatches, "line", line)
    cfg = write_config(tmp_path / "t.toml", openai_url=oai.base_url)
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS[:4])
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.PENDING
    batch_id = batch_ids(read_results(out))[0]
    assert oai.complete_batch(batch_id)["status"] == "failed"
    assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.JOBS_FAILED
    results = {r["id"]: r for r in read_results(out)}
    bad = results.pop("job-2")
    assert bad["error"]["type"] == "batch_invalid"
    assert "input line 3" in bad["error"]["message"] and "invalid_url" in bad["error"]["message"]
    assert {r["error"]["type"] for r in results.values()} == {"batch_failed"}
    monkeypatch.setattr(providers.OpenAIBatches, "line", good_line)
    assert tl("batch", "collect", "--resubmit", "-c", cfg, "--ledger", db) == ExitCode.PENDING
    again = [r for r in read_results(out) if r["status"] == "pending"]
    assert sorted(r["id"] for r in again) == ["job-0", "job-1", "job-3"]


def test_packing_splits_at_the_request_limit(tmp_path: Path, oai: FakeOpenAI) -> None:
    """Seven jobs with a limit of three requests a batch make batches of 3, 3 and 1."""
    cfg = load_config(str(write_config(tmp_path / "t.toml", openai_url=oai.base_url)))
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS[:7])
    writer = ResultWriter(str(tmp_path / "out.jsonl"))
    options = BatchOptions(output=str(tmp_path / "out.jsonl"), limits={"gpt": Limits(3, 10**9)})
    summary = asyncio.run(
        run_files(
            [str(jobs)], config=cfg, writer=writer, ledger_path=tmp_path / "l.db", batches=options
        )
    )
    writer.commit()
    assert summary.exit_code == ExitCode.PENDING and summary.tally.by_status["pending"] == 7
    sizes = [
        n
        for (n,) in sqlite3.connect(tmp_path / "l.db").execute(
            "SELECT requests FROM provider_batches ORDER BY id"
        )
    ]
    assert sizes == [3, 3, 1]
    uploaded = [data.count(b"\n") for obj, data in oai.files.values() if obj["purpose"] == "batch"]
    assert sorted(uploaded) == [1, 3, 3] and len(oai.batches.jobs) == 3


def test_pack_splits_by_bytes_too() -> None:
    """A batch closes before the byte limit is passed; an oversized item travels alone."""
    items = [("a", 40), ("b", 40), ("c", 40), ("big", 500), ("d", 10)]
    chunks = [list(c.items) for c in pack(items, Limits(max_requests=100, max_bytes=100))]
    assert chunks == [["a", "b"], ["c"], ["big"], ["d"]]


def test_ledger_prices_batch_calls_at_the_discount(tmp_path: Path, oai: FakeOpenAI) -> None:
    """Each collected line is a ledger call flagged batch, priced at half from its own usage."""
    cfg = write_config(tmp_path / "t.toml", openai_url=oai.base_url, price=True)
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS[:3])
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.PENDING
    oai.complete_batch(batch_ids(read_results(out))[0])
    assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.OK
    rows = (
        sqlite3.connect(db)
        .execute(
            "SELECT job_id, batch, input_tokens, output_tokens, cost_nanos FROM calls ORDER BY job_id"
        )
        .fetchall()
    )
    results = {r["id"]: r for r in read_results(out)}
    assert [r[0] for r in rows] == IDS[:3]
    for job_id, batch, tokens_in, tokens_out, nanos in rows:
        assert batch == 1 and tokens_in == results[job_id]["usage"]["input_tokens"] > 0
        full = Decimal(tokens_in) * 1 + Decimal(tokens_out) * 4  # micro-dollars at $1/$4 per Mtok
        assert nanos == int((full * 1000 / 2).to_integral_value()) and nanos > 0
        assert results[job_id]["cost_usd"] == nanos / 1_000_000_000
    run_cost = sqlite3.connect(db).execute("SELECT cost_nanos FROM runs").fetchone()[0]
    assert run_cost == sum(r[4] for r in rows)


def test_safe_custom_id_is_valid_unique_and_stable() -> None:
    """Mapped ids match Anthropic's pattern, never collide, and keep safe ids unchanged."""
    used: set[str] = set()
    ids = ["ok-id", "a b", "a_b", "a/b", "é" * 80, "", "ok-id-" + "x" * 70]
    mapped = [providers.safe_custom_id(i, used) for i in ids]
    assert mapped[0] == "ok-id" and mapped[2] == "a_b"
    assert len(set(mapped)) == len(ids)
    assert all(providers.CUSTOM_ID.fullmatch(m) for m in mapped)
    assert providers.safe_custom_id("a b", set()) == mapped[1]


def test_collected_calls_are_in_the_ledger_before_their_results(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Write-ahead on collect too (issue 13): when a collected result leaves for the output,
    its call is already committed in the ledger (another connection sees it)."""
    from tests.fakes import FakeAnthropic
    from tierline.dispatch.batch import collect

    with FakeAnthropic(api_key="sk-test-batch-key-0001") as ant:
        cfg = write_config(tmp_path / "t.toml", anthropic_url=ant.base_url, to="claude")
        jobs = write_jobs(tmp_path / "jobs.jsonl", IDS[:4])
        db = tmp_path / "l.db"
        assert tl("run", jobs, "-c", cfg, "--ledger", db) == ExitCode.PENDING
        pending = [json.loads(x) for x in capsysbinary.readouterr().out.splitlines()]
        ant.complete_batch(batch_ids(pending)[0])
        seen: list[tuple[str, int]] = []

        def emit(result: Result) -> None:
            conn = sqlite3.connect(db)
            try:
                rows = conn.execute("SELECT COUNT(*) FROM calls WHERE job_id = ?", (result.id,))
                seen.append((str(result.id), int(rows.fetchone()[0])))
            finally:
                conn.close()

        asyncio.run(collect(load_config(str(cfg)), db, stdout=emit))
    assert sorted(job for job, _ in seen) == sorted(IDS[:4])
    assert all(count == 1 for _, count in seen), seen
