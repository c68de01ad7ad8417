"""The Makefile, the cron script and the pipelines run end to end against fakes."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.docs.conftest import SYNC_IDS, FakeStack, read_jsonl, run_script, subset
from tierline.resume import RunLock


@pytest.fixture
def make_and_jq() -> None:
    """The Makefile and pipeline examples need make and jq: without them these tests fail
    (a skipped example test is an untested example; .ci/run installs both)."""
    missing = [tool for tool in ("make", "jq") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: apt-get install make jq")


needs_make = needs_jq = pytest.mark.usefixtures("make_and_jq")


def runs_in(ledger: Path) -> int:
    with sqlite3.connect(ledger) as conn:
        return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])


@needs_make
def test_makefile_is_incremental(workdir: Path, fakes: FakeStack) -> None:
    """`make` builds classify, plan, run and report; again it does nothing; a config edit redoes."""
    subset(workdir / "workload.jsonl", workdir / "small.jsonl", ids=SYNC_IDS[:10])
    config = fakes.config("vllm-multi-gpu.toml")
    args = ["make", "-C", str(workdir), "JOBS=small.jsonl", f"CONFIG={config}"]
    first = run_script(args, workdir)
    assert first.returncode == 0, first.stderr
    out = workdir / "out"
    names = {"small.classified.jsonl", "small.plan.txt", "small.results.jsonl", "small.costs.txt"}
    assert names <= {p.name for p in out.iterdir()}
    assert len(read_jsonl(out / "small.results.jsonl")) == 10
    second = run_script(args, workdir)
    assert second.returncode == 0 and "tierline" not in second.stdout + second.stderr
    assert "Nothing to be done" in second.stdout
    assert run_script([*args, "-q"], workdir).returncode == 0  # up to date
    assert runs_in(out / "ledger.db") == 1
    config.write_text(config.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert run_script([*args, "-q"], workdir).returncode == 1  # a changed config: out of date


@needs_make
def test_makefile_config_error_fails_the_target(workdir: Path, tmp_path: Path) -> None:
    """A bad config fails `make run` with tierline's exit 2 and leaves no results target."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[routes]\n1 = ['nope']\n", encoding="utf-8")
    subset(workdir / "workload.jsonl", workdir / "small.jsonl", count=2)
    args = ["make", "-C", str(workdir), "JOBS=small.jsonl", f"CONFIG={bad}", "run"]
    done = run_script(args, workdir)
    assert done.returncode != 0 and "Error 2" in done.stderr
    assert not (workdir / "out" / "small.results.jsonl").exists()


def nightly(workdir: Path, *args: str, **env: str) -> tuple[int, str]:
    """Run the cron script; return its exit code and the log lines it added."""
    log = workdir / "out" / "nightly.log"
    before = log.read_text(encoding="utf-8") if log.exists() else ""
    # TIERLINE_DEBUG: an internal error (exit 70) puts its traceback in the log
    done = run_script(
        ["bash", "cron/tierline-nightly.sh", *args], workdir, TIERLINE_DEBUG="1", **env
    )
    assert done.stdout == "" and done.stderr == "", "cron output must go to the log"
    return done.returncode, log.read_text(encoding="utf-8")[len(before) :]


def test_cron_script_submits_collects_and_skips(
    workdir: Path, fakes: FakeStack, tmp_path: Path
) -> None:
    """Night: sync jobs done, tier-3 jobs pending (exit 0); morning: collected; then no-op."""
    jobs = subset(workdir / "workload.jsonl", workdir / "nightly.jsonl", count=8)
    env = {
        "NIGHTLY_JOBS": jobs.name,
        "NIGHTLY_CONFIG": str(fakes.config("hybrid.toml")),
        "TIERLINE_HOME": str(tmp_path / "home"),
    }
    code, log = nightly(workdir, **env)
    assert code == 0 and "pending:" in log, log
    out = workdir / "out" / "nightly.results.jsonl"
    pending = [r for r in read_jsonl(out) if r["status"] == "pending"]
    assert pending and {r["tier"] for r in pending} == {3}

    code, log = nightly(workdir, "collect", **env)  # the batch has not ended yet
    assert code == 0 and "pending: 2 job(s)" in log, log
    assert any(r["status"] == "pending" for r in read_jsonl(out))

    assert fakes.anthropic is not None
    fakes.anthropic.advance_batches()
    for batch_id in {r["route"][-1]["batch_id"] for r in pending}:
        fakes.anthropic.complete_batch(batch_id)
    code, log = nightly(workdir, **env)  # the 02:00 run sees pending lines and collects
    assert code == 0 and "ok: 8 result(s)" in log, log
    assert {r["status"] for r in read_jsonl(out)} == {"ok"}

    code, log = nightly(workdir, **env)
    assert code == 0 and "up to date" in log
    assert runs_in(workdir / "out" / "nightly.db") == 1


def test_cron_script_exit_handling(workdir: Path, fakes: FakeStack, tmp_path: Path) -> None:
    """Locked output: logged, exit 0; config error: logged, exit 2; failed jobs: exit 1."""
    jobs = subset(workdir / "workload.jsonl", workdir / "nightly.jsonl", count=3)
    env = {
        "NIGHTLY_JOBS": jobs.name,
        "NIGHTLY_CONFIG": str(fakes.config("vllm-multi-gpu.toml")),
        "TIERLINE_HOME": str(tmp_path / "home"),
    }
    (workdir / "out").mkdir()
    with RunLock(str(workdir / "out" / "nightly.results.jsonl")):
        code, log = nightly(workdir, **env)
    assert code == 0 and "another run is writing" in log

    code, log = nightly(workdir, **{**env, "NIGHTLY_CONFIG": "configs/missing.toml"})
    assert code == 2 and "config error" in log

    with jobs.open("a", encoding="utf-8") as f:
        f.write("this line is not JSON\n")
    code, log = nightly(workdir, **env)
    assert code == 1 and "1 invalid" in log, log

    code, log = nightly(workdir, "sideways", **env)
    assert code == 2 and "usage" in log


@needs_jq
def test_pipelines_script(workdir: Path, fakes: FakeStack, tmp_path: Path) -> None:
    """Every snippet of pipelines.sh runs; its outputs add up."""
    subset(workdir / "workload.jsonl", workdir / "small.jsonl", ids=SYNC_IDS)
    subset(workdir / "openai-batch.jsonl", workdir / "openai-batch.jsonl", ids=SYNC_IDS[:3])
    env = {
        "TIERLINE_CONFIG": str(fakes.config("hybrid.toml")),
        "TIERLINE_HOME": str(tmp_path / "home"),
    }
    done = run_script(["bash", "pipelines.sh", "small.jsonl"], workdir, **env)
    assert done.returncode == 0, done.stderr
    out = workdir / "out" / "pipelines"
    jobs = len(SYNC_IDS)
    tiers = sum(len(read_jsonl(out / f"tier{t}.jsonl")) for t in (1, 2, 3))
    assert tiers == jobs
    assert len(read_jsonl(out / "results.jsonl")) == jobs
    tier1 = read_jsonl(out / "tier1.results.jsonl")
    assert tier1 and {r["tier"] for r in tier1} == {1}
    sharded = read_jsonl(out / "sharded.results.jsonl")
    assert sorted(r["line"] for r in sharded) == list(range(1, jobs + 1))
    assert runs_in(out / "merged.db") == 2
    converted = read_jsonl(out / "openai-batch.output.jsonl")
    assert len(converted) == 3 and all(r["response"]["status_code"] == 200 for r in converted)
    assert f'"jobs": {jobs}' in done.stdout  # snippet 4's cost summary
