"""`--engine ray` on a real local Ray cluster against fake vLLM replicas with faults: the same
results, ledger and summary as a local run, an actor killed mid-run included."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeVLLM
from tierline.cli import main
from tierline.config import load_config
from tierline.ray.engine import RayOptions
from tierline.ray.engine import run_files as run_ray
from tierline.resume import Journal
from tierline.run import run_files as run_local

from .conftest import DUPLICATES, EXTRA, content, jobs, vllm_config

pytestmark = [
    pytest.mark.slow,
    # Ray Data's own DataContext warns about its own deprecated defaults (ray 2.60)
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray\\..*"),
]

N = 2000


def summary_json(capsys: pytest.CaptureFixture[str], ledger: Path) -> Any:
    capsys.readouterr()
    assert (
        main(["ledger", "summary", "--ledger", str(ledger), "--by", "tier,backend", "--json"]) == 0
    )
    return json.loads(capsys.readouterr().out)


def local(inputs: Path, config: Path, out: Path, ledger: Path) -> Any:
    cfg = load_config(str(config))
    with Journal(str(out), cfg) as journal:
        summary = asyncio.run(
            run_local(
                [str(inputs)], config=cfg, writer=journal, ledger_path=ledger, select=journal.select
            )
        )
        journal.commit()
    return summary


def test_killed_actor_same_results_and_ledger_as_local(
    ray_cluster: Any, replicas: list[FakeVLLM], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2,000 jobs through 2 actors; one actor is killed (`ray.kill`) after 600 results. Every
    job gets exactly one result, equal in content to the local run's, and `ledger summary` is
    the same."""
    ray = ray_cluster
    inputs = jobs(tmp_path / "jobs.jsonl", N)
    config = vllm_config(tmp_path / "t.toml", replicas)
    base = local(inputs, config, tmp_path / "local.jsonl", tmp_path / "local.db")

    cfg = load_config(str(config))
    state: list[Any] = []
    killed: list[Any] = []

    def on_result(_result: object) -> None:
        if not killed and on_result.count >= 600:  # type: ignore[attr-defined]
            actors = ray.get(state[0].actors.remote())
            assert actors, "no actor registered"
            ray.kill(actors[0], no_restart=False)
            killed.append(actors[0])
        on_result.count += 1  # type: ignore[attr-defined]

    on_result.count = 0  # type: ignore[attr-defined]
    out = tmp_path / "ray.jsonl"
    with Journal(str(out), cfg) as journal:
        summary = run_ray(
            [str(inputs)],
            config=cfg,
            writer=journal,
            ledger_path=tmp_path / "ray.db",
            options=RayOptions(actors=2, batch_size=100, on_started=state.append),
            on_result=on_result,
            select=journal.select,
        )
        journal.commit()
    assert killed, "the actor was never killed"

    lines = out.read_text().splitlines()
    assert len(lines) == N + EXTRA  # one per line of input, bad ones included, no duplicates
    assert content(out) == content(tmp_path / "local.jsonl")
    assert summary.tally.by_status == base.tally.by_status
    assert summary.exit_code == base.exit_code == 1  # the two bad lines
    assert summary_json(capsys, tmp_path / "ray.db") == summary_json(capsys, tmp_path / "local.db")
    with sqlite3.connect(tmp_path / "ray.db") as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        calls = db.execute("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM calls").fetchone()
    assert calls == (N + 1, N + 1)  # one call per job sent: none paid twice made it in, none lost
    assert sum('"dedup_of"' in line for line in lines) == DUPLICATES - 1
    assert sum(r.faults.injected for r in replicas) > 0
    assert not list(tmp_path.glob(".ray.db.ray-*"))  # the fragment was merged and removed
