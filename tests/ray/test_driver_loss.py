"""A driver SIGKILLed and its command run again at once, while the dead driver's actors still
live (tierline/ray/fragments.py, "A dead driver's actors"), on a real local Ray cluster."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO

import pytest

from tierline.cli import main
from tierline.ray.fragments import DriverFragment, open_actor_fragment

from .conftest import EXTRA, CountingVLLM, jobs, vllm_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray\\..*"),
]

N = 600
WINDOW = 4  # max_concurrency: the calls the old actor can have in flight when its driver dies
SETTLE_S = 0.3  # a synchronisation pause (calls already past the hold finish), not a measure
RELEASE_S = 10.0  # the latest the held calls are let go if the rerun does not wait (old code)


def held(path: Path) -> bool:
    """Whether someone holds the flock on `path` (an actor that may still pay)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def kill_marked(marker: str) -> None:
    """SIGKILL the processes whose environment holds `marker` (a value unique to this test)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if marker.encode() in environ.read_bytes().split(b"\0"):
                os.kill(int(environ.parent.name), signal.SIGKILL)


def wait_for(condition: object, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, f"the driver ended before {what}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.05)


def test_rerun_while_the_dead_drivers_actor_lives_pays_each_job_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The driver (on the local cluster it started) is SIGKILLed while its actor has calls in
    flight (held at the server), and the same command is run again at once. The dead driver's
    actor outlives it: its lock is held when the rerun starts. The rerun says it waits, once,
    and waits; the old actor notices its driver's death, starts nothing new, finishes what it
    had in flight (released at the server once the rerun waits) and commits those answers,
    which the rerun reuses.

    Ray's workers notice their raylet's death by a check once a second, so the dead driver's
    actor would live on a second or so, less than a new interpreter takes to import Ray: the
    first driver's cluster checks once a minute instead, as a cluster slow to notice a dead
    driver would (its processes are killed at the end, found by a marker in their environment).

    Before, the rerun read the dead run's answers at once while the old actor kept working
    through its blocks, and sent again what that actor answered afterwards. Now: no job
    answered twice by the server beyond the calls in flight at the kill, the dead run paid
    nothing after the kill beyond its actor's window, one result per input line, and the ledger
    (and `ledger summary`) holds every call the server answered, once."""
    with CountingVLLM(latency_ms=50) as srv:
        config = vllm_config(tmp_path / "t.toml", [srv], max_concurrency=WINDOW)
        inputs = jobs(tmp_path / "jobs.jsonl", N)
        command = [sys.executable, "-m", "tierline", "run", str(inputs), "-c", str(config),
                   "-o", "out.jsonl", "--ledger", "l.db", "--engine", "ray",
                   "--ray-actors", "1"]  # fmt: skip
        tag = uuid.uuid4().hex  # in the environment of each process of the first cluster
        marker = f"TIERLINE_TEST_CLUSTER={tag}"
        slow = {**os.environ, "RAY_raylet_death_check_interval_milliseconds": "60000"}
        slow["TIERLINE_TEST_CLUSTER"] = tag
        # in their own sessions: the Ray processes each starts are killed with its group
        first = subprocess.Popen(
            [*command, "-q"], cwd=tmp_path, stderr=subprocess.DEVNULL, env=slow,
            start_new_session=True,
        )  # fmt: skip
        rerun: subprocess.Popen[str] | None = None
        lines: list[str] = []
        try:
            wait_for(lambda: srv.completed >= N // 3, first, "progress")
            srv.holding = True  # the actor's next calls wait at the server: in flight
            time.sleep(SETTLE_S)
            first.kill()
            first.wait(timeout=60)
            paid_at_kill = srv.completed
            in_flight = srv.arrived - paid_at_kill
            locks = list(tmp_path.glob(".l.db.ray-*.actors/*.lock"))
            # the dead driver's actor is alive, holding its lock, as the rerun starts
            assert any(held(lock) for lock in locks), locks
            rerun = subprocess.Popen(
                command, cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            waiting = threading.Event()

            def read(stream: IO[str]) -> None:  # the rerun's stderr, line by line
                for line in stream:
                    lines.append(line)
                    if "of a dead run to stop" in line:
                        waiting.set()

            def release() -> None:  # once the rerun waits (at the latest after a pause)
                waiting.wait(RELEASE_S)
                srv.holding = False

            assert rerun.stderr is not None
            reader = threading.Thread(target=read, args=(rerun.stderr,), daemon=True)
            reader.start()
            threading.Thread(target=release, daemon=True).start()
            code = rerun.wait(timeout=600)
            reader.join(60)
            rerun.stderr.close()
        finally:
            srv.holding = False
            for proc in [p for p in (first, rerun) if p is not None]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # Ray's agents outlive their driver
            kill_marked(marker)  # the first cluster's workers, each in its own process group
    stderr = "".join(lines)
    assert code == 1, stderr  # the two bad lines
    assert stderr.count("waiting for 1 actor(s) of a dead run to stop") == 1
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(results) == N + EXTRA
    assert len({(r["source"], r["line"]) for r in results}) == len(results)
    assert {r["status"] for r in results if (r["id"] or "").startswith("j")} == {"ok"}
    twice = {prompt: n for prompt, n in srv.by_prompt.items() if n > 1}
    assert 0 < in_flight <= WINDOW and len(twice) <= in_flight, twice
    with sqlite3.connect(tmp_path / "l.db") as db:
        (dead_run, dead_calls), (_, rerun_calls) = db.execute(
            "SELECT runs.id, COUNT(calls.id) FROM runs LEFT JOIN calls ON calls.run_id = runs.id"
            " GROUP BY runs.id ORDER BY runs.started_at"
        ).fetchall()
    assert dead_run and rerun_calls > 0
    # what the dead run paid after its driver died: the calls in flight at the server, and
    # those its actor had queued for a connection slot before it noticed (its window)
    assert dead_calls - paid_at_kill <= 2 * WINDOW
    assert dead_calls + rerun_calls == srv.completed  # every paid call in the ledger, once
    capsys.readouterr()
    assert main(["ledger", "summary", "--ledger", str(tmp_path / "l.db"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(group["calls"] for group in summary) == srv.completed
    assert not list(tmp_path.glob(".l.db.ray-*"))  # the dead run's files merged and removed


def test_rerun_refuses_with_exit_5_while_a_dead_runs_actor_keeps_paying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead run whose actor still holds its lock past the wait (the grace period, 0 here,
    plus the margin): `tierline run --engine ray` exits 5 naming it, before it starts a
    cluster or sends anything, and leaves the dead run's files for a later run."""
    fragment = DriverFragment(tmp_path / "l.db")
    run_id = fragment.ledger.start_run(command="run", config_origin="t.toml", inputs=["j"])
    actor = open_actor_fragment(str(fragment.actors.resolve()), run_id, "a")  # still running
    fragment.ledger.close()
    os.close(fragment._lock)  # the driver dies: the kernel drops its locks
    os.close(fragment._alive)
    with CountingVLLM() as srv:
        config = vllm_config(tmp_path / "t.toml", [srv])
        inputs = jobs(tmp_path / "jobs.jsonl", 3)
        capsys.readouterr()
        code = main(["run", str(inputs), "-c", str(config), "-o", str(tmp_path / "out.jsonl"),
                     "--ledger", str(tmp_path / "l.db"), "--engine", "ray",
                     "--grace", "0"])  # fmt: skip
        assert srv.arrived == 0
    err = capsys.readouterr().err
    assert code == 5, err
    assert "waiting for 1 actor(s) of a dead run to stop" in err
    assert "1 Ray actor(s) of a dead run" in err and fragment.actors.name in err
    assert fragment.path.exists() and (fragment.actors / "a.db").exists()
    actor.close()
