"""A driver SIGKILLed and its command run again at once, while the dead driver's actors still
live (tierline/ray/fragments.py, "A dead driver's actors"), on a real local Ray cluster."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tierline.cli import main

from .conftest import EXTRA, CountingVLLM, jobs, vllm_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray\\..*"),
]

N = 600
WINDOW = 4  # max_concurrency: the calls the old actor can have in flight when its driver dies
SETTLE_S = 0.3  # a synchronisation pause (calls already past the hold finish), not a measure
RELEASE_S = 1.0  # the latest the held calls are let go if the rerun does not wait (old code)


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


def wait_for(condition: object, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, f"the driver ended before {what}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.05)


class Stderr(io.StringIO):
    """The rerun's stderr, which tells the test when the rerun starts waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def write(self, text: str) -> int:
        if "of a dead run to stop" in text:
            self.waiting.set()
        return super().write(text)


def test_rerun_while_the_dead_drivers_actor_lives_pays_each_job_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver (on the local cluster it started) is SIGKILLed while its actor has calls in
    flight (held at the server), and the same command is run again at once. The dead driver's
    actor outlives it (a second or two, until Ray's processes notice their parent died): its
    lock is held when the rerun starts. The rerun says it waits, once, and waits; the old actor
    notices its driver's death, starts nothing new, finishes what it had in flight (released
    at the server once the rerun waits) and commits those answers, which the rerun reuses.

    Before, the rerun read the dead run's answers at once while the old actor kept working
    through its blocks, and sent again what that actor answered afterwards (113 jobs paid
    twice here). Now: no job answered twice by the server beyond the calls in flight at the
    kill, the dead run paid nothing after the kill beyond its actor's window, one result per
    input line, and the ledger (and `ledger summary`) holds every call the server answered,
    once. The rerun runs in this process, so
    that it starts within milliseconds (a new interpreter takes longer to import Ray than the
    old actor lives here)."""
    importlib.import_module("ray.data")  # imported before the kill: the rerun starts at once
    with CountingVLLM(latency_ms=50) as srv:
        config = vllm_config(tmp_path / "t.toml", [srv], max_concurrency=WINDOW)
        inputs = jobs(tmp_path / "jobs.jsonl", N)
        args = ["run", str(inputs), "-c", str(config), "-o", "out.jsonl", "--ledger", "l.db",
                "--engine", "ray", "--ray-actors", "1"]  # fmt: skip
        # its own session: the Ray processes it starts are killed with its group at the end
        first = subprocess.Popen(
            [sys.executable, "-m", "tierline", *args, "-q"],
            cwd=tmp_path, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        stderr = Stderr()
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

            def release() -> None:  # once the rerun waits (at the latest after a pause)
                stderr.waiting.wait(RELEASE_S)
                srv.holding = False

            threading.Thread(target=release, daemon=True).start()
            monkeypatch.chdir(tmp_path)
            monkeypatch.setattr(sys, "stderr", stderr)
            code = main(args)
            monkeypatch.undo()
        finally:
            srv.holding = False
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)  # Ray's agents outlive their driver
    assert code == 1, stderr.getvalue()  # the two bad lines
    assert stderr.getvalue().count("waiting for 1 actor(s) of a dead run to stop") == 1
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
