"""`tierline run --retry-failed`: redo only what is not ok in a finished output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tierline.cli import main
from tierline.errors import BackendError

from .conftest import Calls, jobs_file, read_results


class Flaky(Calls):
    """Fails the jobs in `failing` (non-retryable, so one call each), answers the rest."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing

    def __call__(self, request):  # type: ignore[no-untyped-def]
        self.job_ids.append(request.job_id)
        if request.job_id in self.failing:
            raise BackendError(f"refused {request.job_id}")
        return f"answer to {request.job_id}"


@pytest.fixture
def flaky(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> Flaky:
    from tierline.dispatch import registry
    from tierline.testing import FunctionBackend

    recorder = Flaky({"j3", "j7"})
    monkeypatch.setitem(
        registry.FACTORIES,
        "llamacpp",
        lambda name, _config: FunctionBackend(recorder, name=name, model=f"{name}-model"),
    )
    return recorder


def run(jobs: Path, out: Path, config: Path, *extra: str) -> int:
    return main(["run", str(jobs), "-o", str(out), "-c", str(config), "-q", *extra])


def test_only_the_failed_are_sent_again(tmp_path: Path, flaky: Flaky, three_tiers: Path) -> None:
    """2 of 10 fail: the retry sends those 2 only, keeps the 8 lines as they were, exit 0."""
    jobs, out = jobs_file(tmp_path / "j.jsonl", 10), tmp_path / "out.jsonl"
    assert run(jobs, out, three_tiers) == 1
    before = {r["id"]: r for r in read_results(out)}
    assert {i for i, r in before.items() if r["status"] != "ok"} == {"j3", "j7"}
    flaky.failing.clear()
    flaky.job_ids.clear()
    inode = os.stat(out).st_ino
    assert run(jobs, out, three_tiers, "--retry-failed") == 0
    assert sorted(flaky.job_ids) == ["j3", "j7"]  # type: ignore[type-var]
    after = {r["id"]: r for r in read_results(out)}
    assert len(read_results(out)) == 10 and all(r["status"] == "ok" for r in after.values())
    assert all(after[i] == before[i] for i in before if i not in ("j3", "j7"))
    assert os.stat(out).st_ino != inode  # replaced by rename, not rewritten in place
    assert not out.with_name("out.jsonl.partial").exists()


def test_still_failing_exits_1(tmp_path: Path, flaky: Flaky, three_tiers: Path) -> None:
    """A job that fails again keeps the exit code at 1; the fixed one is ok."""
    jobs, out = jobs_file(tmp_path / "j.jsonl", 10), tmp_path / "out.jsonl"
    assert run(jobs, out, three_tiers) == 1
    flaky.failing.discard("j3")
    flaky.job_ids.clear()
    assert run(jobs, out, three_tiers, "--retry-failed") == 1
    assert sorted(flaky.job_ids) == ["j3", "j7"]  # type: ignore[type-var]
    status = {r["id"]: r["status"] for r in read_results(out)}
    assert status["j3"] == "ok" and status["j7"] == "error" and len(status) == 10


def test_missing_jobs_are_sent(tmp_path: Path, flaky: Flaky, three_tiers: Path) -> None:
    """Jobs added to the input since the finished run have no result: they are sent too."""
    jobs, out = jobs_file(tmp_path / "j.jsonl", 10), tmp_path / "out.jsonl"
    run(jobs, out, three_tiers)
    jobs_file(jobs, 12)
    flaky.failing.clear()
    flaky.job_ids.clear()
    assert run(jobs, out, three_tiers, "--retry-failed") == 0
    assert sorted(flaky.job_ids) == ["j10", "j11", "j3", "j7"]  # type: ignore[type-var]
    assert len(read_results(out)) == 12


def test_all_ok_sends_nothing(tmp_path: Path, calls: Calls, three_tiers: Path) -> None:
    jobs, out = jobs_file(tmp_path / "j.jsonl", 6), tmp_path / "out.jsonl"
    assert run(jobs, out, three_tiers) == 0
    calls.job_ids.clear()
    assert run(jobs, out, three_tiers, "--retry-failed") == 0
    assert calls.job_ids == [] and len(read_results(out)) == 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [((), "does not exist"), (("--fresh",), "--fresh"), (("-o", "-"), "needs -o PATH")],
)
def test_usage_errors_exit_2_before_any_call(
    tmp_path: Path,
    calls: Calls,
    three_tiers: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    jobs, out = jobs_file(tmp_path / "j.jsonl", 3), tmp_path / "out.jsonl"
    if extra == ("--fresh",):
        run(jobs, out, three_tiers)
        calls.job_ids.clear()
    code = run(jobs, out, three_tiers, "--retry-failed", *extra)
    assert code == 2 and calls.job_ids == []
    assert message in capsys.readouterr().err
