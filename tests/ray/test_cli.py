"""`tierline run --engine ray` from the command line: exit codes, the summary, the budget across
actors, and the usage errors that come before anything is sent."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeVLLM
from tierline.cli import main

from .conftest import DUPLICATES, EXTRA, CountingVLLM, content, jobs, vllm_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray\\..*"),
]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["run", *args])
    return code, capsys.readouterr().err


def _timeless(summary: str) -> str:
    summary = re.sub(r"\brun \S+", "run R", summary)
    return re.sub(r"\d+(\.\d+)?\s*(s|ms|jobs/s)\b", "T", summary)


def test_same_exit_code_and_summary_as_local(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad lines make both runs exit 1; the summary lines are the same but for timings."""
    with FakeVLLM() as a, FakeVLLM() as b:
        config = str(vllm_config(tmp_path / "t.toml", [a, b]))
        inputs = str(jobs(tmp_path / "jobs.jsonl", 300))
        code, local = run(capsys, inputs, "-c", config, "-o", "l.jsonl", "--ledger", "l.db")
        code_ray, on_ray = run(
            capsys, inputs, "-c", config, "-o", "r.jsonl", "--ledger", "r.db", "--engine", "ray"
        )
    assert code == code_ray == 1
    assert local.strip() and _timeless(on_ray) == _timeless(local)
    assert content(tmp_path / "r.jsonl") == content(tmp_path / "l.jsonl")


def _run_rows(ledger: Path) -> list[tuple[int, int, int, int, int]]:
    with sqlite3.connect(ledger) as db:
        rows = db.execute(
            "SELECT jobs, ok, failed, deduped, cached FROM runs ORDER BY started_at"
        ).fetchall()
    return [tuple(row) for row in rows]


def test_ledger_rows_count_deduped_and_cached_jobs_as_local(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ray run's row in the ledger counts the jobs answered by dedup and by the answer cache
    as a local run's does (they were 0 on Ray before 3acae84): a first run with identical jobs,
    a second one answered from the --cache file the first filled."""
    with FakeVLLM() as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv]))
        inputs = str(jobs(tmp_path / "jobs.jsonl", 100))
        for engine in ("local", "ray"):
            for attempt in ("1", "2"):
                code, _ = run(
                    capsys, inputs, "-c", config, "-o", f"{engine}{attempt}.jsonl",
                    "--ledger", f"{engine}.db", "--cache", f"{engine}-cache.db", "--engine", engine,
                )  # fmt: skip
                assert code == 1  # the two bad lines
    ray_rows = _run_rows(tmp_path / "ray.db")
    assert ray_rows == _run_rows(tmp_path / "local.db")
    (_, _, _, deduped, _), (_, _, _, _, cached) = ray_rows
    # the identical jobs (temperature 0: cacheable): 3 copies of 1 answer, then 4 from the cache
    assert deduped == DUPLICATES - 1 and cached == DUPLICATES


def test_budget_holds_across_actors(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-cost is one budget for all actors: the ledger's spend stays under it, the jobs it
    could not pay for are skipped_budget, and the run exits 3, as a local run does."""
    cap = 12.0
    with FakeVLLM(latency_ms=5) as a, FakeVLLM(latency_ms=5) as b:
        config = str(vllm_config(tmp_path / "t.toml", [a, b], max_concurrency=16))
        inputs = str(jobs(tmp_path / "jobs.jsonl", 400))
        code, _ = run(
            capsys, inputs, "-c", config, "-o", "r.jsonl", "--ledger", "r.db",
            "--engine", "ray", "--ray-actors", "2", "--max-cost", str(cap),
        )  # fmt: skip
    assert code == 3
    with sqlite3.connect(tmp_path / "r.db") as db:
        spent = db.execute("SELECT SUM(cost_nanos) FROM calls").fetchone()[0] / 1e9
    results = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    statuses = {r["status"] for r in results}
    assert {"ok", "skipped_budget"} <= statuses
    assert 0 < spent <= cap
    assert sum(r["cost_usd"] or 0 for r in results) == pytest.approx(spent)
    # the headroom left is less than one more job's worst case: little stranded in leases
    ok = sum(r["status"] == "ok" for r in results)
    assert ok > 0.8 * cap / max(r["cost_usd"] for r in results if r["status"] == "ok")


def test_missing_extra_is_a_usage_error_before_anything_is_sent(tmp_path: Path) -> None:
    """Without Ray installed, --engine ray exits 2 naming the extra; nothing reaches a backend."""
    with FakeVLLM() as srv:
        config = vllm_config(tmp_path / "t.toml", [srv])
        inputs = jobs(tmp_path / "jobs.jsonl", 3)
        code = (
            "import sys; sys.modules['ray'] = None; from tierline.cli import main; "
            f"sys.exit(main(['run', {str(inputs)!r}, '-c', {str(config)!r}, '--engine', 'ray']))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert srv.request_count == 0
    assert done.returncode == 2, done.stderr
    assert "pip install 'tierline[ray]'" in done.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("bogus", "expected HOST:PORT"),  # was an "internal error" (exit 70)
        ("127.0.0.1:{port}", "no Ray cluster answers there"),  # was a hang: Ray retries forever
        # was exit 70 (after 30 s with no cluster, else from inside Ray Data)
        ("ray://127.0.0.1:{port}", "Ray Client (ray://) cannot run Ray Data"),
    ],
)
@pytest.mark.parametrize("via_env", [False, True])
def test_bad_ray_address_is_a_usage_error_before_anything_is_written(
    tmp_path: Path, address: str, message: str, via_env: bool
) -> None:
    """A wrong --ray-address (or $RAY_ADDRESS) exits 2 naming it: no result file, no ledger
    fragment, nothing sent."""
    address = address.format(port=_closed_port())
    with FakeVLLM() as srv:
        config = vllm_config(tmp_path / "t.toml", [srv])
        inputs = jobs(tmp_path / "jobs.jsonl", 3)
        args = ["run", str(inputs), "-c", str(config), "-o", "r.jsonl", "--ledger", "l.db"]
        args += ["--engine", "ray"] + ([] if via_env else ["--ray-address", address])
        env = {**os.environ, "RAY_ADDRESS": address} if via_env else None
        done = subprocess.run(
            [sys.executable, "-m", "tierline", *args],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert srv.request_count == 0
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and address in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl", "t.toml"]


STRAGGLERS_S = 2.0  # a pause to let calls made after the stop show, not a measurement


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _ledger(path: Path) -> tuple[int, int, int]:
    """Calls, distinct jobs called and spend (nano-dollars) in a ledger."""
    with sqlite3.connect(path) as db:
        calls, jobs_called, cost = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT job_id), SUM(cost_nanos) FROM calls"
        ).fetchone()
    return int(calls), int(jobs_called), int(cost)


@pytest.mark.parametrize("joined", [False, True], ids=["own-cluster", "ray-address"])
def test_sigterm_then_rerun_pays_each_job_once(
    tmp_path: Path, request: pytest.FixtureRequest, joined: bool
) -> None:
    """SIGTERM mid-run: exit 143 with the resume hint, the fragment merged into the ledger (no
    orphan left), the actors told to stop. The same command again finishes with one result per
    line, and the server answered each job exactly once over both runs: the jobs the actor
    answered after the driver stopped taking results are taken from its fragment, not sent
    again. Results and ledger are the local run's in content. The actors stop starting calls
    (the run ends with jobs left for the rerun, well within the grace period).

    On a cluster the driver joined (`--ray-address`), the actors outlive the driver's exit
    unless they read the stop flag: calls they made after it would be paid and unrecorded."""
    join = []
    if joined:
        cluster = request.getfixturevalue("ray_cluster")
        join = ["--ray-address", cluster.get_runtime_context().gcs_address]
    with CountingVLLM() as srv:
        config = vllm_config(tmp_path / "t.toml", [srv], max_concurrency=2)
        inputs = jobs(tmp_path / "jobs.jsonl", 300)
        args = [sys.executable, "-m", "tierline", "run", str(inputs), "-c", str(config)]
        local = subprocess.run(
            [*args, "-o", "local.jsonl", "--ledger", "local.db", "-q"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert local.returncode == 1, local.stderr  # the two bad lines
        srv.by_prompt.clear()
        srv.completed = 0
        srv.latency = 0.1  # slow enough to stop it mid-run
        args += ["-o", "r.jsonl", "--ledger", "l.db", "--engine", "ray", "--ray-actors", "1", *join]
        # a grace long enough for every job: the run stops early only if the actors read the
        # stop flag (else they answer all 300 while the driver waits)
        args += ["--grace", "120"]
        partial = tmp_path / "r.jsonl.partial"
        proc = subprocess.Popen(args, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and _lines(partial) < 20:  # results are arriving
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err
        assert "rerun the same command to resume" in err
        assert not list(tmp_path.glob(".l.db.ray-*")), "the fragment was left unmerged"
        time.sleep(STRAGGLERS_S)  # an actor still sending would be seen by the server meanwhile
        stopped_at = srv.completed
        assert 0 < _ledger(tmp_path / "l.db")[0] == stopped_at < 300 + 1
        srv.latency = 0.0
        again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stderr  # the two bad lines
    twice = {prompt: n for prompt, n in srv.by_prompt.items() if n > 1}
    assert len(srv.by_prompt) == 300 + 1 and not twice, twice  # 1: the identical jobs' one
    assert content(tmp_path / "r.jsonl") == content(tmp_path / "local.jsonl")
    assert _ledger(tmp_path / "l.db") == _ledger(tmp_path / "local.db")
    with sqlite3.connect(tmp_path / "l.db") as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2


def test_local_run_never_imports_ray(tmp_path: Path) -> None:
    """`tierline run` without --engine ray does not import Ray (start-up cost, and the extra is
    optional)."""
    with FakeVLLM() as srv:
        config = vllm_config(tmp_path / "t.toml", [srv])
        inputs = jobs(tmp_path / "jobs.jsonl", 3)
        code = (
            "import sys; from tierline.cli import main; "
            f"c = main(['run', {str(inputs)!r}, '-c', {str(config)!r}, '-o', 'o.jsonl', '-q']); "
            "sys.exit(10 + c if 'ray' in sys.modules else c)"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
    assert done.returncode == 1, done.stderr  # the two bad lines; 11 would mean ray was imported


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray-address", "auto"], "need --engine ray"),
        (["--engine", "spark"], "expected local or ray"),
        (["--engine", "ray", "--provider-batch"], "provider batches"),
    ],
)
def test_engine_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    inputs = jobs(tmp_path / "jobs.jsonl", 1)
    code, err = run(capsys, str(inputs), *args)
    assert code == 2 and message in err


def test_max_concurrency_holds_across_actors(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three actors share max_concurrency = 6: the replica never has more than 6 requests
    running at once (each actor would allow 6 if limits were per actor)."""
    with FakeVLLM(latency_ms=20) as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv], max_concurrency=6))
        inputs = str(jobs(tmp_path / "jobs.jsonl", 240))
        code, _ = run(
            capsys, inputs, "-c", config, "-o", "r.jsonl", "--ledger", "r.db",
            "--engine", "ray", "--ray-actors", "3",
        )  # fmt: skip
        peak = srv.pool.peak
    assert code == 1  # the two bad lines
    assert 0 < peak <= 6


def test_rerun_after_the_driver_dies_resumes(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The driver is killed (SIGKILL) mid-run; the same command again keeps what was written,
    sends only the rest, and merges the dead run's ledger fragment: one result per line, and
    every call either run made for a written result is in the ledger."""
    address = ray_cluster.get_runtime_context().gcs_address
    with FakeVLLM(latency_ms=20) as a, FakeVLLM(latency_ms=20) as b:
        config = str(vllm_config(tmp_path / "t.toml", [a, b], max_concurrency=8))
        inputs = str(jobs(tmp_path / "jobs.jsonl", 1500))
        command = [sys.executable, "-m", "tierline", "run", inputs, "-c", config, "-o", "out.jsonl",
                   "--ledger", "l.db", "--engine", "ray", "--ray-address", address, "-q"]  # fmt: skip
        partial = tmp_path / "out.jsonl.partial"
        first = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
            while not (partial.exists() and partial.read_bytes().count(b"\n") >= 300):
                assert first.poll() is None and time.monotonic() < deadline, "no progress"
                time.sleep(0.2)
        finally:
            first.kill()
            first.wait(timeout=60)
        assert list(tmp_path.glob(".l.db.ray-*.db"))  # the dead driver's fragment is left
        again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stderr  # the two bad lines
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(results) == 1500 + EXTRA
    assert len({(r["source"], r["line"]) for r in results}) == len(results)
    assert not list(tmp_path.glob(".l.db.ray-*.db"))  # merged and removed
    with sqlite3.connect(tmp_path / "l.db") as db:
        runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        paid = {row[0] for row in db.execute("SELECT DISTINCT job_id FROM calls")}
    assert runs == 2  # the killed run (from its fragment) and the resume
    sent = {r["id"] for r in results if r["status"] == "ok" and "dedup_of" not in r}
    assert sent <= paid


def _clean_jobs(path: Path, n: int, start: int = 0) -> Path:
    """Jobs with no bad line: a run of them succeeds (exit 0)."""
    path.write_text(
        "".join(
            json.dumps({"id": f"j{i}", "prompt": f"Summarize ticket {i}."}) + "\n"
            for i in range(start, start + n)
        )
    )
    return path


def test_uri_inputs_are_read_through_ray_data(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URI Ray Data reads (file:// here: s3:// needs a network) names a directory of JSONL
    parts: each part is read and validated as a local file is, its URI is each result's
    `source`, and the results are a local run's over the same files."""
    parts = tmp_path / "in"
    parts.mkdir()
    _clean_jobs(parts / "a.jsonl", 30)
    (parts / "b.jsonl").write_text('{"id": "j3", "prompt": "again"}\n{not json\n')
    with FakeVLLM() as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv]))
        local_inputs = [str(parts / "a.jsonl"), str(parts / "b.jsonl")]
        code, _ = run(capsys, *local_inputs, "-c", config, "-o", "l.jsonl", "--ledger", "l.db")
        code_ray, _ = run(
            capsys, parts.as_uri(), "-c", config, "-o", "r.jsonl", "--ledger", "r.db",
            "--engine", "ray",
        )  # fmt: skip
    assert code == code_ray == 1  # the duplicate id and the bad line of b.jsonl
    results = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {r["source"] for r in results} == {(parts / n).as_uri() for n in ("a.jsonl", "b.jsonl")}
    # the same lines, but for the URI where the local run names the path (sources, errors)
    as_paths = tmp_path / "r-paths.jsonl"
    as_paths.write_text((tmp_path / "r.jsonl").read_text().replace("file://", ""))
    assert content(as_paths) == content(tmp_path / "l.jsonl")


def test_uri_without_engine_ray_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A local run reads files and stdin: a URI is refused (exit 2) before anything is sent."""
    with FakeVLLM() as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv]))
        code, err = run(capsys, "s3://bucket/jobs/", "-c", config, "-o", "r.jsonl")
        assert srv.request_count == 0
    assert code == 2 and "s3://bucket/jobs/" in err and "--engine ray" in err
    assert not list(tmp_path.glob("r.jsonl*"))


def test_unreadable_uri_is_a_usage_error_before_anything_is_written(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeVLLM() as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv]))
        missing = (tmp_path / "nowhere.jsonl").as_uri()
        code, err = run(
            capsys, missing, "-c", config, "-o", "r.jsonl", "--ledger", "l.db", "--engine", "ray"
        )
        assert srv.request_count == 0
    assert code == 2 and f"cannot read {missing}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.toml"]


def test_quiet_run_on_its_own_cluster_prints_nothing(tmp_path: Path) -> None:
    """-q on success prints nothing, Ray's own start-up and actor lines included (they are
    written out only when the run breaks); the results are all there."""
    with FakeVLLM() as srv:
        config = vllm_config(tmp_path / "t.toml", [srv])
        inputs = _clean_jobs(tmp_path / "jobs.jsonl", 40)
        done = subprocess.run(
            [sys.executable, "-m", "tierline", "run", inputs.as_uri(), "-c", str(config),
             "-o", "r.jsonl", "--ledger", "l.db", "--engine", "ray", "-q"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""
    assert _lines(tmp_path / "r.jsonl") == 40
