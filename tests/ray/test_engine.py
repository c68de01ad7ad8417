"""`--engine ray` on a real local Ray cluster against fake vLLM replicas with faults: the same
results, ledger and summary as a local run, an actor killed mid-run included."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tierline.cli import main
from tierline.config import load_config
from tierline.errors import UsageError
from tierline.ray.engine import RayOptions
from tierline.ray.engine import run_files as run_ray
from tierline.resume import Journal
from tierline.run import run_files as run_local

from .conftest import DUPLICATES, EXTRA, CountingVLLM, content, jobs, paid_per_job, vllm_config

pytestmark = [
    pytest.mark.slow,
    # Ray Data's own DataContext warns about its own deprecated defaults (ray 2.60)
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray\\..*"),
]

N = 2000
SETTLE_S = 1.0  # a synchronisation pause, not a measurement: see the test's docstring


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


def test_killed_actor_same_results_and_every_paid_call_in_the_ledger(
    ray_cluster: Any,
    replicas: list[CountingVLLM],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """2,000 jobs through 2 actors; one actor is killed (`ray.kill`) after 600 results. Every
    job gets exactly one result, equal in content to the local run's, and the ledger holds
    every chat completion the fake servers answered: the killed actor's too, none twice.

    The kill happens while the servers hold every request (no reply on its way to an actor), a
    moment after they started holding, so the actors have read every reply already sent: a
    reply still on the wire when its client dies is a call no client can record (the in-flight
    window of any kill -9). Held requests of the killed actor are answered to a closed socket
    and not counted."""
    ray = ray_cluster
    inputs = jobs(tmp_path / "jobs.jsonl", N)
    config = vllm_config(tmp_path / "t.toml", replicas)
    base = local(inputs, config, tmp_path / "local.jsonl", tmp_path / "local.db")
    served_before = sum(r.completed for r in replicas)
    paid_before = paid_per_job(replicas)
    with sqlite3.connect(tmp_path / "local.db") as db:
        assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == served_before

    cfg = load_config(str(config))
    state: list[Any] = []
    killed: list[Any] = []

    def on_result(_result: object) -> None:
        if not killed and on_result.count >= 600:  # type: ignore[attr-defined]
            actors = ray.get(state[0].actors.remote())
            assert actors, "no actor registered"
            for replica in replicas:
                replica.holding = True
            time.sleep(SETTLE_S)  # the actors handle the replies they already have
            ray.kill(actors[0], no_restart=False)
            killed.append(actors[0])
            time.sleep(SETTLE_S)  # the servers see the killed actor's connections close
            for replica in replicas:
                replica.holding = False
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
    served = sum(r.completed for r in replicas) - served_before
    # no job paid twice: those the killed actor answered are reused from its fragment by the
    # retried block and the driver, not sent again (its held, in-flight ones got no reply)
    paid = paid_per_job(replicas) - paid_before
    twice = {prompt: n for prompt, n in paid.items() if n > 1}
    assert len(paid) == N + 1 and not twice, twice
    with sqlite3.connect(tmp_path / "ray.db") as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        calls, ok, jobs_called, cost = db.execute(
            "SELECT COUNT(*), SUM(status = 'ok'), COUNT(DISTINCT job_id), SUM(cost_nanos) "
            "FROM calls"
        ).fetchone()
        run_cost = db.execute("SELECT cost_nanos FROM runs").fetchone()[0]
    # every paid call is in the ledger once: the killed actor's (some of them paid again by
    # the retried block) and the survivors' alike
    assert ok == calls == served
    assert jobs_called == N + 1  # every job sent (1 of the DUPLICATES) has its calls
    assert run_cost == cost
    # `ledger summary` has the local run's jobs in each group, and every call paid: the local
    # run's plus those the killed actor paid for results that never reached the driver (sent
    # again), which a local run killed as hard would have paid too
    ray_summary = summary_json(capsys, tmp_path / "ray.db")
    local_summary = summary_json(capsys, tmp_path / "local.db")
    assert sorted((g["group"]["tier"], g["jobs"]) for g in ray_summary) == sorted(
        (g["group"]["tier"], g["jobs"]) for g in local_summary
    )
    assert sum(g["calls"] for g in ray_summary) == served >= N + 1
    assert sum(r.faults.injected for r in replicas) > 0
    assert sum('"dedup_of"' in line for line in lines) == DUPLICATES - 1
    assert not list(tmp_path.glob(".ray.db.ray-*"))  # the fragments were merged and removed


def test_actors_that_cannot_see_the_run_directory_refuse_before_sending(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """As on a cluster whose nodes do not mount the ledger's directory: the run's marker is not
    where the actors look. Every actor refuses before its first call; the run exits 2 naming
    the cause, and the servers got no chat request."""
    inputs = jobs(tmp_path / "jobs.jsonl", 50)
    with CountingVLLM() as a:
        cfg = load_config(str(vllm_config(tmp_path / "t.toml", [a])))

        def hide(_state: object) -> None:  # the driver made the run directory: hide its marker
            for marker in tmp_path.glob(".ray.db.ray-*.actors/RUN"):
                marker.unlink()

        with (
            Journal(str(tmp_path / "out.jsonl"), cfg) as journal,
            pytest.raises(UsageError, match="cannot see the run directory") as err,
        ):
            run_ray(
                [str(inputs)],
                config=cfg,
                writer=journal,
                ledger_path=tmp_path / "ray.db",
                options=RayOptions(actors=2, on_started=hide),
            )
        assert a.request_count == 0
    assert err.value.exit_code == 2
