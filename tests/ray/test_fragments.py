"""Ledger fragments of a Ray run without Ray: each actor's file, the idempotent gather and
merge (a repeated merge after a dead driver counts nothing twice), and the refusal of an actor
that cannot see the run directory."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from tierline.errors import LockedError
from tierline.jobs import Usage
from tierline.ledger.store import CallRecord
from tierline.ray.fragments import (
    NOT_SHARED,
    DriverFragment,
    DriverWatch,
    Orphans,
    StoredResults,
    merge_orphans,
    open_actor_fragment,
    stored_results,
)


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
    die(fragment)  # its locks go with it
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


def test_answers_are_stored_with_their_calls_and_found_by_key(tmp_path: Path) -> None:
    """An actor keeps each answer by resume key in its fragment, committed with the job's calls
    before it is handed on; any reader of the run directory finds it (a retried block)."""
    fragment = DriverFragment(tmp_path / "l.db")
    directory = fragment.actors.resolve()
    book = open_actor_fragment(str(directory), "r", "a")
    stored = StoredResults([directory])

    async def answer() -> dict[str, str]:
        book.record_call("r", call("j1"))
        book.record_result("r", "k1", '{"id": "j1"}')
        await book.durable()  # what an actor awaits before its results leave it
        return stored.find(["k1", "k2"])

    assert asyncio.run(answer()) == {"k1": '{"id": "j1"}'}
    with sqlite3.connect(directory / "a.db") as db:  # the answer's call is in the same file
        assert db.execute("SELECT job_id FROM calls").fetchall() == [("j1",)]
    book.close()
    stored.close()


def test_a_dead_drivers_answers_stay_until_the_next_run_ends(tmp_path: Path) -> None:
    """The next run merges a dead driver's calls at once but keeps its actors' files (their
    answers are reused by it) until it ends, and merges them again then."""
    fragment, _ = start(tmp_path)
    fragment.ledger.close()
    die(fragment)
    orphans = Orphans(tmp_path / "l.db")
    assert len(calls(tmp_path / "l.db")) == 3  # merged at once
    assert orphans.directories == [fragment.actors]
    assert merge_orphans(tmp_path / "l.db") == 0  # held by the run that found them
    orphans.close()
    assert [job for job, _ in calls(tmp_path / "l.db")] == ["j1", "j2", "j3"]
    assert not list(tmp_path.glob(".l.db.ray-*"))


def die(fragment: DriverFragment) -> None:
    """The driver's process dies: the kernel drops its locks."""
    os.close(fragment._lock)
    os.close(fragment._alive)


def test_a_rerun_waits_for_a_dead_runs_live_actor_then_reuses_what_it_paid(
    tmp_path: Path,
) -> None:
    """The driver dies while one of its actors still works (Ray has not stopped it yet). The
    next run says it waits, once, and waits until that actor lets its lock go; only then does
    it read the stored answers and merge: the answer and call the actor committed meanwhile are
    both found (before, the next run read the answers at once and paid this job again)."""
    fragment, run_id = start(tmp_path)
    book = open_actor_fragment(str(fragment.actors.resolve()), run_id, "c")
    watch = DriverWatch(fragment.actors)
    assert not watch.check()  # the driver lives
    fragment.ledger.close()
    die(fragment)
    waiting = threading.Event()
    told: list[str] = []
    found: dict[str, str] = {}

    def tell(line: str) -> None:
        told.append(line)
        waiting.set()

    def rerun() -> None:
        orphans = Orphans(tmp_path / "l.db", 60, tell)
        found.update(stored_results(orphans.directories, ["k4"]))
        orphans.close()

    thread = threading.Thread(target=rerun)
    thread.start()
    assert waiting.wait(60), "the rerun did not wait for the live actor"
    assert watch.check()  # what the actor sees: its driver is gone (the rerun holds its fragment)

    async def last_answer() -> None:  # what the actor does as it stands down (worker.py)
        book.record_call(run_id, call("j4"))
        book.record_result(run_id, "k4", '{"id": "j4"}')
        await book.durable()

    asyncio.run(last_answer())
    assert thread.is_alive()  # still waiting: the lock is held
    book.release()
    thread.join(60)
    assert told == ["waiting for 1 actor(s) of a dead run to stop"]
    assert found == {"k4": '{"id": "j4"}'}
    assert [job for job, _ in calls(tmp_path / "l.db")] == ["j1", "j2", "j3", "j4"]
    assert not list(tmp_path.glob(".l.db.ray-*"))
    book.close()


def test_a_rerun_refuses_while_a_dead_runs_actor_keeps_its_lock(tmp_path: Path) -> None:
    """An actor of a dead run that does not stop within the wait: the run refuses (exit 5)
    rather than pay again what it answers; the dead run's files are left for a later run."""
    fragment, run_id = start(tmp_path)
    book = open_actor_fragment(str(fragment.actors.resolve()), run_id, "c")
    fragment.ledger.close()
    die(fragment)
    with pytest.raises(LockedError, match=r"1 Ray actor\(s\) of a dead run") as err:
        Orphans(tmp_path / "l.db", 0.2)
    assert err.value.exit_code == 5
    assert fragment.path.exists() and fragment.actors.is_dir()
    book.close()  # the actor stops: the next run takes the dead run in
    assert merge_orphans(tmp_path / "l.db") == 1
    assert len(calls(tmp_path / "l.db")) == 3
