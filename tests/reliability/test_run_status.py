"""What a signalled `tierline run` leaves behind besides its results: the ledger run closed as
`interrupted` and no lock file (docs/reliability.md, "Signals" and "Locks")."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from tests.fakes import FakeVLLM

from .conftest import jobs_file
from .procs import HANG_GUARD, start_run, vllm_config, wait_for_requests

pytestmark = pytest.mark.slow


def run_rows(ledger: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(ledger) as conn:
        return conn.execute("SELECT status, jobs, finished_at IS NOT NULL FROM runs").fetchall()


@pytest.mark.parametrize(("sig", "code"), [(None, 0), (signal.SIGTERM, 143)])
def test_ledger_status_and_lock_file_after_the_run(
    tmp_path: Path, sig: signal.Signals | None, code: int
) -> None:
    """A finished run is `ok` in the ledger, a signalled one `interrupted`; either way the run
    is closed (finished_at set) and `PATH.lock` is gone."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 40)
    out, ledger = tmp_path / "out.jsonl", tmp_path / "ledger.db"
    with FakeVLLM(model="m", latency_ms=3600_000 if sig else 0) as vllm:
        config = vllm_config(tmp_path / "tierline.toml", vllm)
        args = [str(jobs), "-o", str(out), "-c", str(config), "--ledger", str(ledger)]
        proc = start_run([*args, "--grace", "0.1"], tmp_path / "home")
        if sig is not None:
            wait_for_requests(vllm, 1)
            assert out.with_name("out.jsonl.lock").exists()  # held while the run lasts
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == code, err.decode()
    [(status, jobs_seen, finished)] = run_rows(ledger)
    assert status == ("interrupted" if sig else "ok") and finished == 1
    assert sig or jobs_seen == 40
    assert not out.with_name("out.jsonl.lock").exists()
