"""Provider batches through the CLI against the stateful fakes: submit, pending, collect, wait."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from tests.fakes import FakeAnthropic, FakeOpenAI
from tierline.config import load_config
from tierline.dispatch.batch import BatchOptions, CollectReport
from tierline.dispatch.batch import Progress as BatchProgress
from tierline.errors import ExitCode
from tierline.interrupts import Stop
from tierline.run import RunSummary
from tierline.run.command import RunRequest, run_command

from .conftest import batch_ids, read_results, tl, write_config, write_jobs

IDS = [f"job-{n}" for n in range(6)]


def test_submit_pending_then_collect(
    tmp_path: Path, oai: FakeOpenAI, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A run submits and exits 4 with pending lines; collect replaces them with final results."""
    cfg = write_config(tmp_path / "t.toml", openai_url=oai.base_url)
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.PENDING
    pending = read_results(out)
    assert [r["status"] for r in pending] == ["pending"] * len(IDS)
    [batch_id] = batch_ids(pending)
    assert batch_id.startswith("batch_")
    assert tl("batch", "status", "-c", cfg, "--ledger", db) == ExitCode.PENDING
    capsysbinary.readouterr()
    assert tl("batch", "status", "-c", cfg, "--ledger", db, "--json") == ExitCode.PENDING
    [status] = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    assert (status["batch_id"], status["requests"], status["collected_at"]) == (batch_id, 6, None)
    assert status["output"] == str(out) and status["live"] is True
    assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.PENDING  # not ended yet
    oai.complete_batch(batch_id)
    assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.OK
    final = read_results(out)
    assert sorted(r["id"] for r in final) == sorted(IDS)  # still one line per job
    for r in final:
        # The fake shuffles its output file: each answer must be its own job's.
        assert r["status"] == "ok" and f"question about {r['id']}" in r["output"]
        assert r["route"][-1]["batch_id"] == batch_id and r["usage"]["input_tokens"] > 0
        assert len(r["key"]) == 32  # the resume key the run wrote is kept
    assert tl("batch", "status", "-c", cfg, "--ledger", db) == ExitCode.OK
    run = sqlite3.connect(db).execute("SELECT status, ok, failed FROM runs").fetchone()
    assert run == ("ok", len(IDS), 0)


def test_same_command_again_collects(tmp_path: Path, oai: FakeOpenAI) -> None:
    """Cron: the same `run` command tonight submits, tomorrow it collects instead of rerunning."""
    cfg = write_config(tmp_path / "t.toml", openai_url=oai.base_url)
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    command = ("run", jobs, "-o", out, "-c", cfg, "--ledger", db)
    assert tl(*command) == ExitCode.PENDING
    assert tl(*command) == ExitCode.PENDING  # still running at the provider: nothing resent
    assert len(oai.batches.jobs) == 1
    oai.advance_batches()
    oai.advance_batches()
    oai.advance_batches()
    assert tl(*command) == ExitCode.OK
    assert {r["status"] for r in read_results(out)} == {"ok"} and len(oai.batches.jobs) == 1


def submit_and_collect(tmp_path: Path, oai: FakeOpenAI) -> tuple[str | Path, ...]:
    """Run the documented command twice: it submits (exit 4), then collects (exit 0)."""
    cfg = write_config(tmp_path / "t.toml", openai_url=oai.base_url)
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    command = ("run", jobs, "-o", out, "-c", cfg, "--ledger", db)
    assert tl(*command) == ExitCode.PENDING
    oai.complete_batch(batch_ids(read_results(out))[0])
    assert tl(*command) == ExitCode.OK
    return command


def test_same_command_after_collection_keeps_the_results(
    tmp_path: Path, oai: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cron keeps running the documented command after the batches were collected: the
    complete results stay (no `pending` lines), no batch is submitted, the exit code is the
    results' own; --fresh runs the jobs again."""
    command = submit_and_collect(tmp_path, oai)
    out = tmp_path / "out.jsonl"
    collected = out.read_bytes()
    capsys.readouterr()
    assert tl(*command) == ExitCode.OK
    assert tl(*command) == ExitCode.OK
    assert out.read_bytes() == collected and len(oai.batches.jobs) == 1
    assert "already holds the collected results" in capsys.readouterr().err
    assert tl(*command, "--fresh") == ExitCode.PENDING  # asked for: a new batch
    assert len(oai.batches.jobs) == 2
    assert {r["status"] for r in read_results(out)} == {"pending"}


def test_another_run_on_the_output_ends_the_old_batches_claim(
    tmp_path: Path, oai: FakeOpenAI
) -> None:
    """Once another command (here a synchronous config) rewrote the -o, the old collected
    batches no longer speak for it: their command runs again rather than reporting them."""
    command = submit_and_collect(tmp_path, oai)
    sync, out = tmp_path / "sync.toml", tmp_path / "out.jsonl"
    batch_config = (tmp_path / "t.toml").read_text()
    sync.write_text(batch_config.replace('mode = "batch"', 'mode = "sync"'), encoding="utf-8")
    other = tuple(sync if a == tmp_path / "t.toml" else a for a in command)
    assert tl(*other) == ExitCode.OK  # not "already collected": another config
    assert all(r["route"][-1].get("batch_id") is None for r in read_results(out))
    assert tl(*command) == ExitCode.PENDING and len(oai.batches.jobs) == 2


def test_changed_inputs_with_open_batches_are_refused(
    tmp_path: Path, oai: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run on new input must not overwrite results whose batches are still open."""
    cfg = write_config(tmp_path / "t.toml", openai_url=oai.base_url)
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.PENDING
    write_jobs(jobs, [*IDS, "job-new"])
    capsys.readouterr()
    assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.USAGE
    assert "tierline batch collect" in capsys.readouterr().err
    assert [r["status"] for r in read_results(out)] == ["pending"] * len(IDS)


def test_wait_writes_final_results(tmp_path: Path) -> None:
    """`run --wait` polls until the batch ends and writes final results, exit 0."""
    with FakeOpenAI(api_key="sk-test-batch-key-0001", auto_advance=True) as oai:
        cfg = write_config(tmp_path / "t.toml", openai_url=oai.base_url)
        jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
        out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
        assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db, "--wait") == ExitCode.OK
        retrieves = [r for r in oai.requests if r.method == "GET" and "/batches/" in r.path]
    results = read_results(out)
    assert len(results) == len(IDS) and {r["status"] for r in results} == {"ok"}
    assert len(retrieves) >= 3  # validating -> in_progress -> finalizing -> completed


def test_wait_on_stdout_writes_only_final_lines(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """On stdout, where lines cannot be taken back, --wait writes one final line per job."""
    with FakeAnthropic(api_key="sk-test-batch-key-0001", auto_advance=True) as ant:
        cfg = write_config(tmp_path / "t.toml", anthropic_url=ant.base_url, to="claude")
        jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
        code = tl("run", jobs, "-c", cfg, "--ledger", tmp_path / "l.db", "--wait")
    lines = [json.loads(x) for x in capsysbinary.readouterr().out.splitlines()]
    assert code == ExitCode.OK
    assert sorted(r["id"] for r in lines) == sorted(IDS) and {r["status"] for r in lines} == {"ok"}


def test_anthropic_ids_are_mapped_to_safe_custom_ids(tmp_path: Path, ant: FakeAnthropic) -> None:
    """Ids Anthropic refuses get safe custom_ids; results come back under the original ids."""
    ids = ["ticket/17 ü", "a b", "a_b", "x" * 100, "plain-id_1", "42"]
    cfg = write_config(tmp_path / "t.toml", anthropic_url=ant.base_url, to="claude")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "".join(json.dumps({"id": i, "prompt": f"question about {i}"}) + "\n" for i in ids),
        encoding="utf-8",
    )
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.PENDING
    [create] = [r for r in ant.requests if r.method == "POST" and r.path == "/v1/messages/batches"]
    sent = [item["custom_id"] for item in create.body["requests"]]
    assert len(set(sent)) == len(ids)
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", c) for c in sent)
    assert "plain-id_1" in sent and "42" in sent  # safe ids are kept as they are
    ant.complete_batch(batch_ids(read_results(out))[0])
    assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.OK
    results = {r["id"]: r for r in read_results(out)}
    assert sorted(results) == sorted(ids)
    for job_id, r in results.items():
        assert r["status"] == "ok" and f"question about {job_id}"[:30] in r["output"]
    mapping = dict(sqlite3.connect(db).execute("SELECT custom_id, job_id FROM provider_batch_jobs"))
    assert sorted(mapping.values()) == sorted(ids) and sorted(mapping) == sorted(sent)


def test_max_cost_bounds_batched_jobs(tmp_path: Path, oai: FakeOpenAI) -> None:
    """Under --max-cost a batched job's worst case is counted when submitted; the rest is skipped."""
    cfg = write_config(tmp_path / "t.toml", openai_url=oai.base_url)
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    # gpt-4o-mini at $0.60/Mtok output: 512 max_tokens is about $0.0003 a job, so 3 fit in $0.001.
    code = tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db, "--max-cost", "0.001")
    statuses = sorted(r["status"] for r in read_results(out))
    assert code == ExitCode.BUDGET
    assert statuses.count("pending") == 3 and statuses.count("skipped_budget") == 3
    [batch_id] = batch_ids([r for r in read_results(out) if r["status"] == "pending"])
    assert len(oai.batches.jobs) == 1 and batch_id.startswith("batch_")


def test_batch_answers_are_not_checked_or_escalated(tmp_path: Path, oai: FakeOpenAI) -> None:
    """docs/escalation.md: an answer that arrives through a provider batch is not checked, even
    with [escalation] on and a tier 2 on another backend: it stands as the job's result."""
    cfg = write_config(tmp_path / "t.toml", openai_url=oai.base_url)
    text = cfg.read_text(encoding="utf-8").replace('2 = ["gpt"]', '2 = ["claude"]')
    cfg.write_text(text + "\n[escalation]\nmax_hops = 1\n", encoding="utf-8")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"id": "j", "prompt": "question about j", "tier": 1, "expect": ["zzz"]}) + "\n",
        encoding="utf-8",
    )
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.PENDING
    oai.complete_batch(batch_ids(read_results(out))[0])
    assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.OK
    [result] = read_results(out)
    assert result["status"] == "ok" and result["escalations"] == 0 and "zzz" not in result["output"]
    assert [hop["backend"] for hop in result["route"]] == ["gpt"]


def test_openai_responses_kind_goes_through_the_batch_api(tmp_path: Path, oai: FakeOpenAI) -> None:
    """A batch-mode `openai-responses` backend submits `/v1/responses` lines encoded by its
    codec, and its output lines are decoded by the same codec: one answer per job."""
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        '[backends.r]\nkind = "openai-responses"\nmodel = "gpt-4.1"\n'
        f'base_url = "{oai.base_url}"\nmode = "batch"\nmax_attempts = 1\n'
        '[tiering]\nclassifier = false\n[routes]\n1 = "r"\n2 = "r"\n3 = "r"\n',
        encoding="utf-8",
    )
    jobs = write_jobs(tmp_path / "jobs.jsonl", IDS)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    assert tl("run", jobs, "-o", out, "-c", cfg, "--ledger", db) == ExitCode.PENDING
    [batch_id] = batch_ids(read_results(out))
    assert oai.complete_batch(batch_id)["endpoint"] == "/v1/responses"
    assert tl("batch", "collect", "-c", cfg, "--ledger", db) == ExitCode.OK
    final = read_results(out)
    assert sorted(r["id"] for r in final) == sorted(IDS)
    for r in final:
        assert r["status"] == "ok" and f"question about {r['id']}" in r["output"]
        assert r["usage"]["input_tokens"] > 0 and r["cost_usd"] > 0  # batch-priced gpt-4.1


class RecordingView:
    """run/command.py's `View`, recording what `run_command` shows, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @contextmanager
    def waiting(self) -> Iterator[Callable[[BatchProgress], None]]:
        self.events.append("waiting")
        yield lambda p: self.events.append(f"progress {p.done}/{p.requests}")

    def collected(self, report: CollectReport) -> None:
        self.events.append(f"collected ok={report.ok} pending={report.pending}")

    def finished(self, summary: RunSummary) -> None:
        self.events.append(f"finished pending={summary.tally.by_status['pending']}")


def test_run_command_collects_the_runs_batches_after_the_summary(tmp_path: Path) -> None:
    """`run_command` with --wait: the summary is shown before the run's own batches are waited
    for; the same command again collects nothing new and runs nothing (no run, exit 0)."""
    with FakeOpenAI(api_key="sk-test-batch-key-0001", auto_advance=True) as oai:
        cfg = load_config(str(write_config(tmp_path / "t.toml", openai_url=oai.base_url)))
        jobs = str(write_jobs(tmp_path / "jobs.jsonl", IDS))
        out = str(tmp_path / "out.jsonl")
        request = RunRequest(
            [jobs], out, cfg, tmp_path / "l.db", batches=BatchOptions(False, True, out)
        )
        view = RecordingView()
        outcome = run_command(
            request, Stop(), lambda _journal: nullcontext(lambda _result: None), view
        )
        assert outcome.exit_code == ExitCode.OK and outcome.run is not None
        n = len(IDS)
        assert view.events[:3] == ["waiting", f"finished pending={n}", "waiting"]
        assert view.events[-1] == f"collected ok={n} pending=0"
        assert f"progress {n}/{n}" in view.events
        again = RecordingView()
        outcome = run_command(
            request, Stop(), lambda _journal: nullcontext(lambda _result: None), again
        )
    assert outcome.run is None and outcome.exit_code == ExitCode.OK
    assert again.events[0] == "waiting" and "finished" not in " ".join(again.events)
    assert {r["status"] for r in read_results(tmp_path / "out.jsonl")} == {"ok"}
