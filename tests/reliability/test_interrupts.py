"""kill -9, SIGINT and SIGTERM against a real `tierline run` subprocess and a fake vLLM server:
nothing lost, nothing duplicated, paid calls repeated on resume at most the in-flight window."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeVLLM

from .conftest import jobs_file, read_results
from .procs import (
    HANG_GUARD,
    complete_results,
    requested_ids,
    start_run,
    vllm_config,
    wait_for_lines,
    wait_for_requests,
)

pytestmark = pytest.mark.slow

JOBS = 300
CONCURRENCY = 8
WINDOW = 2 * CONCURRENCY  # the scheduler's in-flight window: twice the backends' concurrency


@pytest.fixture
def vllm() -> Iterator[FakeVLLM]:
    with FakeVLLM(model="m", latency_ms=20) as server:
        yield server


@pytest.fixture
def setup(tmp_path: Path, vllm: FakeVLLM) -> tuple[list[str], Path]:
    jobs = jobs_file(tmp_path / "jobs.jsonl", JOBS)
    config = vllm_config(tmp_path / "tierline.toml", vllm, max_concurrency=CONCURRENCY)
    out = tmp_path / "out.jsonl"
    return [str(jobs), "-o", str(out), "-c", str(config), "-q"], out


def test_kill_9_then_resume(tmp_path: Path, vllm: FakeVLLM, setup: tuple[list[str], Path]) -> None:
    """SIGKILL midway; the rerun completes every job once and repeats at most WINDOW calls."""
    args, out = setup
    partial = out.with_name(out.name + ".partial")
    proc = start_run(args, tmp_path / "home")
    wait_for_lines(partial, JOBS // 3, proc)
    proc.kill()
    proc.communicate(timeout=HANG_GUARD)
    assert not out.exists()
    first = requested_ids(vllm)
    saved = {r["id"] for r in complete_results(partial)}
    vllm.requests.clear()

    proc = start_run(args, tmp_path / "home")
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0, err.decode()
    ids = [r["id"] for r in read_results(out)]
    assert len(ids) == JOBS and set(ids) == {f"j{i}" for i in range(JOBS)}
    second = requested_ids(vllm)
    repeated = sum(n for job, n in second.items() if job in first)
    assert not saved & set(second)  # nothing saved is paid for again
    assert repeated <= WINDOW, (repeated, WINDOW)
    print(f"kill -9 after {len(saved)} saved results: {repeated} call(s) repeated, window {WINDOW}")  # noqa: T201


def test_kill_9_then_edit_input_and_partial_then_resume(
    tmp_path: Path, vllm: FakeVLLM, setup: tuple[list[str], Path]
) -> None:
    """A careless user between the kill and the resume: new jobs inserted at the top of the
    input, some saved results pasted twice into the partial file. The resume still ends with
    exactly one result per job, each naming the line its job is on now."""
    args, out = setup
    jobs = Path(args[0])
    partial = out.with_name(out.name + ".partial")
    proc = start_run(args, tmp_path / "home")
    wait_for_lines(partial, JOBS // 3, proc)
    proc.kill()
    proc.communicate(timeout=HANG_GUARD)
    lines = [x for x in partial.read_bytes().splitlines(keepends=True) if x.endswith(b"\n")]
    partial.write_bytes(b"".join(lines) + b"".join(lines[:20]))  # 20 results twice
    new = jobs_file(tmp_path / "new.jsonl", 5, start=JOBS).read_bytes()
    jobs.write_bytes(new + jobs.read_bytes())

    proc = start_run(args, tmp_path / "home")
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0, err.decode()
    results = read_results(out)
    ids = [r["id"] for r in results]
    assert len(ids) == len(set(ids)) == JOBS + 5
    current = {json.loads(x)["id"]: n for n, x in enumerate(jobs.read_bytes().splitlines(), 1)}
    assert {r["id"]: r["line"] for r in results} == current


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_flushes_and_hints(
    tmp_path: Path, vllm: FakeVLLM, setup: tuple[list[str], Path], sig: int, code: int
) -> None:
    """A signal lets in-flight calls land, exits 130/143 with a resume hint; rerun finishes."""
    args, out = setup
    partial = out.with_name(out.name + ".partial")
    proc = start_run(args, tmp_path / "home")
    wait_for_lines(partial, 50, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == code, err.decode()
    assert "rerun the same command to resume" in err.decode() and err.decode().count("\n") == 1
    saved = complete_results(partial)
    # Within the grace period every call that was sent also got its result written.
    assert sum(requested_ids(vllm).values()) == len(saved) < JOBS and not out.exists()

    proc = start_run(args, tmp_path / "home")
    proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0 and len({r["id"] for r in read_results(out)}) == JOBS


HANG = 3600.0  # a reply that never comes while the test runs: only a cancel can end the call


def test_grace_expiry_cancels_slow_calls(tmp_path: Path, vllm: FakeVLLM) -> None:
    """Calls that cannot finish within --grace are cancelled: SIGTERM exits 143, nothing
    half-written, and every cancelled job is done by the resume."""
    vllm.latency = HANG
    jobs = jobs_file(tmp_path / "jobs.jsonl", 20)
    config = vllm_config(tmp_path / "tierline.toml", vllm)
    out = tmp_path / "out.jsonl"
    args = [str(jobs), "-o", str(out), "-c", str(config)]
    proc = start_run([*args, "--grace", "0.5"], tmp_path / "h")
    wait_for_requests(vllm, 4)
    proc.send_signal(signal.SIGTERM)
    # Without the cancel this would wait an hour for the replies (the timeout only stops a hang).
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 143, err.decode()
    assert out.with_name(out.name + ".partial").read_bytes() == b""

    vllm.latency = 0.0
    proc = start_run(args, tmp_path / "h")
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0, err.decode()
    assert {r["id"] for r in read_results(out)} == {f"j{i}" for i in range(20)}


def test_second_signal_cancels_at_once(tmp_path: Path, vllm: FakeVLLM) -> None:
    """Two signals with an hour of grace and calls that never answer: the second one cancels
    them and the run exits at once, with the code of the signal it took as the first."""
    vllm.latency = HANG
    jobs = jobs_file(tmp_path / "jobs.jsonl", 20)
    config = vllm_config(tmp_path / "tierline.toml", vllm)
    out = tmp_path / "out.jsonl"
    proc = start_run(
        [str(jobs), "-o", str(out), "-c", str(config), "--grace", str(HANG)], tmp_path / "h"
    )
    wait_for_requests(vllm, 4)
    # Two different signals: the kernel would merge two pending SIGTERMs into one. Which one the
    # run handles first is up to the kernel; the exit code must follow that one.
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_GUARD)  # without the cancel: an hour
    first = "SIGINT" if "interrupted by SIGINT" in err.decode() else "SIGTERM"
    assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[first], err.decode()
    assert f"interrupted by {first};" in err.decode() and "rerun the same command" in err.decode()
    assert out.with_name(out.name + ".partial").read_bytes() == b""


def test_second_run_on_same_output_is_locked(
    tmp_path: Path, vllm: FakeVLLM, setup: tuple[list[str], Path]
) -> None:
    """While one run writes out.jsonl a second exits 5 at once, naming the holder."""
    vllm.latency = HANG  # the first run holds the lock until it is stopped
    args, _out = setup
    first = start_run(args, tmp_path / "home")
    try:
        wait_for_requests(vllm, 1)  # the first run holds the lock from before its first call
        second = start_run(args, tmp_path / "home")
        _, err = second.communicate(timeout=HANG_GUARD)
        assert second.returncode == 5
        assert "being written by another tierline run (pid" in err.decode()
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=HANG_GUARD)


def test_stdout_redirected_to_a_file_is_locked_too(tmp_path: Path, vllm: FakeVLLM) -> None:
    """Two runs whose stdout is the same file collide on a lock in the data dir."""
    import subprocess
    import sys

    vllm.latency = HANG  # the first run holds the lock until it is stopped
    jobs = jobs_file(tmp_path / "jobs.jsonl", 50)
    config = vllm_config(tmp_path / "tierline.toml", vllm)
    env_home = tmp_path / "home"
    with open(tmp_path / "out.jsonl", "ab") as sink:
        first = subprocess.Popen(
            [sys.executable, "-m", "tierline", "run", str(jobs), "-c", str(config)],
            stdout=sink,
            stderr=subprocess.PIPE,
            env={**__import__("os").environ, "TIERLINE_HOME": str(env_home)},
        )
        try:
            wait_for_requests(vllm, 1)
            second = subprocess.run(
                [sys.executable, "-m", "tierline", "run", str(jobs), "-c", str(config)],
                stdout=sink,
                stderr=subprocess.PIPE,
                timeout=HANG_GUARD,
                env={**__import__("os").environ, "TIERLINE_HOME": str(env_home)},
            )
            assert second.returncode == 5 and b"another tierline run" in second.stderr
        finally:
            first.send_signal(signal.SIGTERM)
            first.communicate(timeout=HANG_GUARD)


def test_ctrl_c_while_the_cli_is_imported_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """A Ctrl-C in the first tenth of a second (typer and rich loading) printed a
    KeyboardInterrupt traceback. A stand-in `typer` on PYTHONPATH sends the SIGINT from inside
    that import, every time."""
    (tmp_path / "typer.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    for command in (["-m", "tierline"], ["-c", "import tierline; tierline.console_main()"]):
        done = subprocess.run(
            [sys.executable, *command, "--help"],
            capture_output=True,
            env={**os.environ, "PYTHONPATH": path},
            timeout=60,
        )
        assert (done.returncode, done.stderr, done.stdout) == (130, b"tierline: interrupted\n", b"")
