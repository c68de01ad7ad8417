"""`tierline.ray.dispatch` and `tierline.ray.classify` on a Ray Dataset (the library entry
points), on a real local Ray cluster."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import tierline.ray
from tests.fakes import FakeVLLM
from tierline.cli import main
from tierline.config import load_config

from .conftest import CountingVLLM, vllm_config

SETTLE_S = 1.0  # a synchronisation pause, not a measurement: see the kill test's docstring

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray\\..*"),
]


def rows(n: int) -> list[dict[str, Any]]:
    """Jobs as `ray.data.read_json` gives them: the job's fields as columns (nulls where a row
    lacks one)."""
    return [
        {"id": f"j{i}", "prompt": f"Summarize ticket {i}.", "task": "summarize" if i % 2 else None}
        for i in range(n)
    ]


def test_dispatch_returns_one_result_row_per_job(ray_cluster: Any, tmp_path: Path) -> None:
    ray = ray_cluster
    with FakeVLLM() as srv:
        config = load_config(str(vllm_config(tmp_path / "t.toml", [srv])))
        out = tierline.ray.dispatch(ray.data.from_items(rows(40)), config, actors=2, batch_size=8)
        got = out.take_all()
        sent = srv.request_count
    assert sorted(r["id"] for r in got) == sorted(f"j{i}" for i in range(40))
    assert {r["status"] for r in got} == {"ok"} and sent >= 40
    line = json.loads(got[0]["result"])
    assert line["id"] == got[0]["id"] and line["output"] == got[0]["output"] and line["key"]
    calls = json.loads(got[0]["calls"])
    assert len(calls) == 1 and calls[0]["job_id"] == got[0]["id"] and calls[0]["cost_nanos"] > 0


def test_dispatch_with_a_run_dir_never_pays_twice(ray_cluster: Any, tmp_path: Path) -> None:
    """With `run_dir`, each actor stores its answers and calls there: the same pipeline run
    again (as a block Ray retries after an actor loss is) sends nothing, gives the same
    results, and `tierline.ray.record` puts every paid call in a ledger once. Without it, the
    second run would pay for all 40 jobs again."""
    ray = ray_cluster
    run_dir = tmp_path / "run"
    with CountingVLLM() as srv:
        config = load_config(str(vllm_config(tmp_path / "t.toml", [srv])))

        def once() -> dict[str, dict[str, Any]]:
            ds = ray.data.from_items(rows(40))
            out = tierline.ray.dispatch(ds, config, actors=2, batch_size=8, run_dir=run_dir)
            return {r["id"]: r for r in out.take_all()}

        first = once()
        completions = srv.completed
        second = once()
        assert srv.completed == completions  # nothing sent again
    assert len(first) == 40 and {r["status"] for r in first.values()} == {"ok"}
    assert {i: r["output"] for i, r in second.items()} == {i: r["output"] for i, r in first.items()}
    assert all(json.loads(r["calls"]) == [] for r in second.values())  # paid by the first run
    ledger = tmp_path / "ledger.db"
    assert tierline.ray.record(run_dir, ledger) == 40
    assert tierline.ray.record(run_dir, ledger) == 40  # again: nothing added
    with sqlite3.connect(ledger) as db:
        calls, jobs = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT job_id) FROM calls WHERE status = 'ok'"
        ).fetchone()
    assert calls == jobs == 40
    assert main(["ledger", "summary", "--ledger", str(ledger)]) == 0


def test_dispatch_with_a_run_dir_survives_a_killed_actor(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One of two actors is killed (`ray.kill`, Ray restarts it and retries its block) after
    100 of 400 rows: every job still has exactly one row, the server answered each job once
    (the retried block reuses what the killed actor stored; its held calls got no reply), and
    `record` puts every call the server answered in the ledger, once, as `ledger summary` shows.
    The kill happens while the server holds every request, as in
    tests/ray/test_engine.py::test_killed_actor_same_results_and_every_paid_call_in_the_ledger
    (a reply on the wire when its client dies is a call no client can record)."""
    ray = ray_cluster
    run_dir = tmp_path / "run"
    killed: list[Any] = []
    got: list[dict[str, Any]] = []
    with CountingVLLM(latency_ms=5) as srv:
        config = load_config(str(vllm_config(tmp_path / "t.toml", [srv], max_concurrency=8)))
        ds = ray.data.from_items(rows(400))
        out = tierline.ray.dispatch(
            ds, config, actors=2, batch_size=25, run_dir=run_dir, run_id="killed"
        )
        for row in out.iter_rows():
            got.append(row)
            if len(got) == 100:
                [name] = [
                    n for n in ray.util.list_named_actors() if n.startswith("tierline-killed-")
                ]
                actors = ray.get(ray.get_actor(name).actors.remote())
                srv.holding = True
                time.sleep(SETTLE_S)  # the actors handle the replies they already have
                ray.kill(actors[0], no_restart=False)
                killed.append(actors[0])
                time.sleep(SETTLE_S)  # the server sees the killed actor's connections close
                srv.holding = False
        completed = srv.completed
        twice = {prompt: n for prompt, n in srv.by_prompt.items() if n > 1}
    assert killed, "no actor was killed"
    assert sorted(r["id"] for r in got) == sorted(f"j{i}" for i in range(400))
    assert {r["status"] for r in got} == {"ok"}
    assert len(srv.by_prompt) == 400 and not twice, twice
    ledger = tmp_path / "ledger.db"
    assert tierline.ray.record(run_dir, ledger, run_id="killed") == completed
    with sqlite3.connect(ledger) as db:
        calls, jobs = db.execute("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM calls").fetchone()
    assert calls == jobs == completed
    capsys.readouterr()
    assert main(["ledger", "summary", "--ledger", str(ledger), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(g["calls"] for g in summary) == completed and sum(g["jobs"] for g in summary) == 400


def test_dispatch_turns_a_bad_row_into_an_error_row(ray_cluster: Any, tmp_path: Path) -> None:
    """A row that is not a valid job is an `invalid` result, as a bad line is; nothing is sent."""
    ray = ray_cluster
    with FakeVLLM() as srv:
        config = load_config(str(vllm_config(tmp_path / "t.toml", [srv])))
        bad = [{"id": "x", "prompt": "hi", "max_tokens": -1}]
        got = tierline.ray.dispatch(ray.data.from_items(bad), config, actors=1).take_all()
        assert srv.request_count == 0
    assert [r["status"] for r in got] == ["invalid"]
    assert "max_tokens" in json.loads(got[0]["result"])["error"]["message"]


def test_classify_adds_tier_why_confidence(ray_cluster: Any, tmp_path: Path) -> None:
    ray = ray_cluster
    with FakeVLLM() as srv:
        config = load_config(str(vllm_config(tmp_path / "t.toml", [srv])))
        data = [{"id": "a", "prompt": "Summarize this ticket.", "tier": None},
                {"id": "b", "prompt": "Prove it.", "tier": 3}]  # fmt: skip
        got = {
            r["id"]: r for r in tierline.ray.classify(ray.data.from_items(data), config).take_all()
        }
        assert srv.request_count == 0  # classify calls no backend
    assert got["b"]["tier"] == 3 and "tier" in got["b"]["why"]
    assert got["a"]["tier"] in (1, 2, 3) and got["a"]["why"] and 0 <= got["a"]["confidence"] <= 1
