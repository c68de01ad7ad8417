"""Ledger fragments of a Ray run without Ray: each actor's file, the idempotent gather and
merge (a repeated merge after a dead driver counts nothing twice), and the refusal of an actor
that cannot see the run directory."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tierline.jobs import Usage
from tierline.ledger.store import CallRecord
from tierline.ray.fragments import NOT_SHARED, DriverFragment, merge_orphans, open_actor_fragment


def call(job: str) -> CallRecord:
    return CallRecord(
        job_id=job,
        tier=1,
        backend="gpu",
        model="m",
        status="ok",
        usage=Usage(input_tokens=10, output_tokens=5),
        cost_nanos=1000,
        price_source="config",
        latency_s=0.01,
    )


def calls(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT job_id, cost_nanos FROM calls ORDER BY job_id").fetchall()


def start(tmp_path: Path) -> tuple[DriverFragment, str]:
    fragment = DriverFragment(tmp_path / "l.db")
    run_id = fragment.ledger.start_run(command="run", config_origin="t.toml", inputs=["j"])
    for actor, jobs in (("a", ["j1", "j2"]), ("b", ["j3"])):
        book = open_actor_fragment(str(fragment.actors.resolve()), run_id, actor)
        for job in jobs:
            book.record_call(run_id, call(job))
        book.close()
    return fragment, run_id


def test_gather_and_merge_count_each_actor_call_once(tmp_path: Path) -> None:
    fragment, run_id = start(tmp_path)
    fragment.gather(run_id)
    fragment.gather(run_id)  # again, as a rerun after a crash between the two would
    fragment.merge_into(tmp_path / "l.db")
    assert calls(tmp_path / "l.db") == [("j1", 1000), ("j2", 1000), ("j3", 1000)]
    assert not list(tmp_path.glob(".l.db.ray-*"))  # the run's fragment and directory removed


def test_a_dead_drivers_actor_fragments_are_merged_once_by_the_next_run(tmp_path: Path) -> None:
    fragment, run_id = start(tmp_path)
    fragment.gather(run_id)  # half way: gathered, not merged
    fragment.ledger.close()
    os.close(fragment._lock)  # the driver dies: its lock goes with it
    assert merge_orphans(tmp_path / "l.db") == 1
    assert merge_orphans(tmp_path / "l.db") == 0  # nothing left to merge twice
    assert calls(tmp_path / "l.db") == [("j1", 1000), ("j2", 1000), ("j3", 1000)]
    assert not list(tmp_path.glob(".l.db.ray-*"))


def test_a_live_runs_fragments_are_left_alone(tmp_path: Path) -> None:
    fragment, run_id = start(tmp_path)
    assert merge_orphans(tmp_path / "l.db") == 0
    assert fragment.actors.is_dir()
    fragment.gather(run_id)
    fragment.merge_into(tmp_path / "l.db")
    assert len(calls(tmp_path / "l.db")) == 3


def test_an_actor_that_cannot_see_the_run_directory_refuses(tmp_path: Path) -> None:
    """As on a node without the shared volume: the directory (and its marker) is not there."""
    missing = tmp_path / "elsewhere" / ".l.db.ray-0.actors"
    with pytest.raises(RuntimeError, match=NOT_SHARED + ".*cannot see the run directory"):
        open_actor_fragment(str(missing), "r", "a")
    assert not missing.exists()
