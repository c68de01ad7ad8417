"""The bad input corpus through `tierline run` end to end: every bad line gets a clear error
result naming its file and line, and every good line still completes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeVLLM
from tierline.cli import main
from tierline.errors import ExitCode
from tierline.resume import RunLock

from .conftest import THREE_TIERS, Calls, jobs_file, read_results
from .procs import requested_ids, start_run, vllm_config

BIG = 50 * 1024 * 1024  # over the 32 MiB line cap

# (line bytes, expected id, expected status, error type, words in the message)
CORPUS: list[tuple[bytes, str | None, str, str | None, str]] = [
    (
        b'\xef\xbb\xbf{"id": "bom", "prompt": "After a byte order mark", "tier": 1}\r',
        "bom",
        "ok",
        None,
        "",
    ),
    (b'{"id": "crlf", "prompt": "CRLF line", "tier": 2}\r', "crlf", "ok", None, ""),
    (b"{not json", None, "invalid", "invalid_json", "invalid JSON"),
    (b'{"id": "utf", "prompt": "\xff\xfe bad"}', None, "invalid", "invalid_json", "invalid UTF-8"),
    (
        b'{"id": "big", "prompt": "' + b"a" * BIG + b'"}',
        None,
        "invalid",
        "line_too_long",
        "longer than",
    ),
    (b"", None, "", None, ""),  # blank lines are not jobs
    (b"   \t", None, "", None, ""),
    (b'{"id": "noprompt"}', "noprompt", "invalid", "invalid_job", "missing 'prompt'"),
    (
        b'{"id": "types", "prompt": "x", "max_tokens": "ten"}',
        "types",
        "invalid",
        "invalid_job",
        "'max_tokens' must be a positive integer, got string",
    ),
    (
        b'{"id": "tier", "prompt": "x", "tier": 7}',
        "tier",
        "invalid",
        "invalid_job",
        "'tier' must be 1, 2 or 3",
    ),
    (
        b'{"id": "crlf", "prompt": "duplicate"}',
        "crlf",
        "invalid",
        "duplicate_id",
        "duplicate id 'crlf'",
    ),
    # issue 13: hostile schemas, a regex that can never match, Batch body keys, a huge id
    (
        b'{"id": "selfref", "prompt": "x", "response_format": {"type": "json_object", "schema": '
        b'{"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}}}',
        "selfref",
        "invalid",
        "invalid_job",
        "cycle of references",
    ),
    (
        b'{"id": "remote", "prompt": "x", "response_format": {"type": "json_object", "schema": '
        b'{"properties": {"a": {"$ref": "http://127.0.0.1:9/s.json"}}}}}',
        "remote",
        "invalid",
        "invalid_job",
        "points outside the job's schema",
    ),
    (
        b'{"id": "regex", "prompt": "x", "expect": "(["}',
        "regex",
        "invalid",
        "invalid_job",
        "not a valid regex",
    ),
    (
        b'{"custom_id": "n50", "url": "/v1/chat/completions", "body": {"n": 50, "messages": '
        b'[{"role": "user", "content": "x"}]}}',
        "n50",
        "invalid",
        "invalid_job",
        "'body.n' is not supported",
    ),
    (
        b'{"id": 12345678901234567890123, "prompt": "A big id", "tier": 1}',
        "12345678901234567890123",
        "ok",
        None,
        "",
    ),
    (b'{"id": "last", "prompt": "The last good job", "tier": 3}', "last", "ok", None, ""),
]


def test_every_bad_line_is_an_error_result_and_the_rest_completes(
    tmp_path: Path, calls: Calls, three_tiers: Path
) -> None:
    """One result per non-blank line, each bad one saying where and why; exit 1."""
    jobs = tmp_path / "bad.jsonl"
    jobs.write_bytes(b"\n".join(line for line, *_ in CORPUS) + b"\n")
    out = tmp_path / "out.jsonl"
    assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 1
    by_line = {r["line"]: r for r in read_results(out)}
    expected = {n: case for n, case in enumerate(CORPUS, 1) if case[0].strip()}
    assert sorted(by_line) == sorted(expected)
    for number, (_, job_id, status, kind, words) in expected.items():
        result = by_line[number]
        assert (result["status"], result["id"] if job_id else job_id) == (status, job_id), number
        if kind:
            assert result["error"]["type"] == kind and words in result["error"]["message"]
            assert f"bad.jsonl:{number}:" in result["error"]["message"]
    assert sorted(calls.job_ids) == ["12345678901234567890123", "bom", "crlf", "last"]  # type: ignore[type-var]


@pytest.mark.llama
def test_prompt_longer_than_the_context_with_the_real_model(
    tmp_path: Path, smollm2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the embedded model, a prompt over its context is that job's error; others finish."""
    jobs = tmp_path / "ctx.jsonl"
    long_prompt = "Summarize: " + "the quick brown fox jumps over the lazy dog " * 400
    jobs.write_text(
        json.dumps({"id": "short", "prompt": "Say hi.", "max_tokens": 2})
        + "\n"
        + json.dumps({"id": "long", "prompt": long_prompt, "max_tokens": 2})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    assert main(["run", str(jobs), "-o", str(out), "-q"]) == 1
    results = {r["id"]: r for r in read_results(out)}
    assert results["short"]["status"] == "ok"
    assert results["long"]["status"] == "error"
    assert "context" in results["long"]["error"]["message"]


# --- Bad paths, streams and flags: exit 2 with one line, before anything is sent -------------


def run_quiet(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, list[str]]:
    """Run the CLI in process; (exit code, lines it wrote on stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.splitlines()


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    return jobs_file(tmp_path / "jobs.jsonl", 6)


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("jobs.jsonl", "is the input"),
        ("link-to-jobs.jsonl", "is the input"),  # a symlink to the input
        ("hardlink-to-jobs.jsonl", "is the input"),
        ("l.db", "is the ledger"),  # --ledger l.db -o l.db
        ("tierline.toml", "is the config"),
    ],
)
def test_output_that_is_a_file_the_run_reads_or_keeps_is_refused(
    tmp_path: Path,
    calls: Calls,
    three_tiers: Path,
    jobs: Path,
    capsys: pytest.CaptureFixture[str],
    target: str,
    words: str,
) -> None:
    """`-o` the input, a link to it, the ledger or the config: exit 2, every file unchanged."""
    (tmp_path / "link-to-jobs.jsonl").symlink_to(jobs)
    (tmp_path / "hardlink-to-jobs.jsonl").hardlink_to(jobs)
    ledger = tmp_path / "l.db"
    assert main(["run", str(jobs), "-c", str(three_tiers), "--ledger", str(ledger), "-q",
                 "-o", str(tmp_path / "first.jsonl")]) == 0  # fmt: skip
    calls.job_ids.clear()
    before = {p: p.read_bytes() for p in (jobs, ledger, three_tiers)}
    code, err = run_quiet(
        capsys, "run", jobs, "-c", three_tiers, "--ledger", ledger, "-o", tmp_path / target
    )
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert {p: p.read_bytes() for p in before} == before
    assert (tmp_path / "link-to-jobs.jsonl").is_symlink()
    assert calls.job_ids == []


def test_classify_output_over_its_input_is_refused(
    tmp_path: Path, jobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`classify` writes the same way as `run`: never over its own input."""
    before = jobs.read_bytes()
    code, err = run_quiet(capsys, "classify", jobs, "-o", jobs)
    assert code == 2 and len(err) == 1 and "is the input" in err[0], err
    assert jobs.read_bytes() == before


def test_output_whose_partial_file_is_the_input_is_refused(
    tmp_path: Path, calls: Calls, three_tiers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-o X` writes X.partial first: when that is the input, the jobs would be overwritten."""
    jobs = jobs_file(tmp_path / "out.jsonl.partial", 3)
    before = jobs.read_bytes()
    code, err = run_quiet(capsys, "run", jobs, "-c", three_tiers, "-o", tmp_path / "out.jsonl")
    assert code == 2 and "out.jsonl.partial is the input" in err[0]
    assert jobs.read_bytes() == before and calls.job_ids == []


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-fifo", "directory"])
def test_output_that_is_not_a_regular_file_is_refused(
    tmp_path: Path,
    calls: Calls,
    three_tiers: Path,
    jobs: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    """A device or pipe (what `-o /dev/null` is) would be replaced by a regular file at the
    rename; a directory failed only after every job was paid. Both: exit 2, nothing sent."""
    fifo, target = tmp_path / "fifo", tmp_path / "out"
    os.mkfifo(fifo)
    if kind == "symlink-to-fifo":
        target.symlink_to(fifo)
    elif kind == "fifo":
        target = fifo
    else:
        target.mkdir()
    code, err = run_quiet(capsys, "run", jobs, "-c", three_tiers, "-o", target)
    assert code == 2 and len(err) == 1, err
    assert ("is a directory" if kind == "directory" else "not a regular file") in err[0]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and calls.job_ids == []
    assert kind != "symlink-to-fifo" or target.is_symlink()


def test_output_naming_an_open_descriptor_is_refused(
    tmp_path: Path, calls: Calls, three_tiers: Path, jobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-o /dev/stdout` (here `/dev/fd/N` of a file we hold open, as a shell's `>>` would):
    a stream, never a file to replace: exit 2, the file and its inode untouched."""
    held = tmp_path / "held.jsonl"
    with open(held, "wb") as fh:
        fh.write(b"kept\n")
        fh.flush()
        inode = os.fstat(fh.fileno()).st_ino
        code, err = run_quiet(
            capsys, "run", jobs, "-c", three_tiers, "-o", f"/dev/fd/{fh.fileno()}"
        )
    assert code == 2 and len(err) == 1 and "not a regular file" in err[0], err
    assert held.read_bytes() == b"kept\n" and held.stat().st_ino == inode
    assert calls.job_ids == []


def test_output_through_a_symlink_writes_the_target_and_keeps_the_link(
    tmp_path: Path, calls: Calls, three_tiers: Path, jobs: Path
) -> None:
    """The atomic rename acts on the real file: the symlink stays a symlink."""
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text("old\n", encoding="utf-8")
    link.symlink_to(real)
    assert main(["run", str(jobs), "-c", str(three_tiers), "-o", str(link), "-q"]) == 0
    assert link.is_symlink() and len(read_results(real)) == 6


def test_symlink_to_a_locked_output_is_locked(
    tmp_path: Path, calls: Calls, three_tiers: Path, jobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run through a symlink to an output another run holds: exit 5, nothing paid."""
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    link.symlink_to(real)
    with RunLock(str(real)):
        code, err = run_quiet(capsys, "run", jobs, "-c", three_tiers, "-o", link)
    assert code == ExitCode.LOCKED and "another tierline run" in err[0]
    assert calls.job_ids == [] and link.is_symlink() and not real.exists()


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores mode bits: use sysfs)."""
    if os.geteuid() == 0:
        return Path("/sys")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def test_read_only_output_directory(
    tmp_path: Path, calls: Calls, three_tiers: Path, jobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_quiet(
        capsys, "run", jobs, "-c", three_tiers, "-o", unwritable_dir(tmp_path) / "out.jsonl"
    )
    assert code == 2 and len(err) == 1 and "out.jsonl" in err[0], err
    assert calls.job_ids == []


@pytest.mark.parametrize("kind", ["directory", "not-sqlite", "home-is-a-file", "home-read-only"])
def test_unusable_ledger(
    tmp_path: Path,
    calls: Calls,
    three_tiers: Path,
    jobs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """--ledger a directory or a file that is not SQLite, or TIERLINE_HOME (where the default
    ledger lives) a file: exit 2 naming it, the file untouched, nothing sent."""
    args: list[str | Path] = ["run", jobs, "-c", three_tiers, "-o", tmp_path / "out.jsonl"]
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a database\n", encoding="utf-8")
    if kind == "directory":
        (tmp_path / "ledger-dir").mkdir()
        args += ["--ledger", tmp_path / "ledger-dir"]
        words = "is a directory"
    elif kind == "not-sqlite":
        args += ["--ledger", notes]
        words = "not a SQLite database"
    else:
        home = notes if kind == "home-is-a-file" else unwritable_dir(tmp_path)
        monkeypatch.setenv("TIERLINE_HOME", str(home))
        words = "set TIERLINE_HOME to a writable directory"
    code, err = run_quiet(capsys, *args)
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert notes.read_text(encoding="utf-8") == "my notes, not a database\n"
    assert calls.job_ids == [] and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "1e15", "-1", "-inf"])
def test_max_cost_must_be_a_finite_amount(
    tmp_path: Path,
    calls: Calls,
    three_tiers: Path,
    jobs: Path,
    capsys: pytest.CaptureFixture[str],
    value: str,
) -> None:
    """`inf` and `nan` would mean no cap at all, `1e15` overflowed the ledger: exit 2."""
    code, err = run_quiet(capsys, "run", jobs, "-c", three_tiers, f"--max-cost={value}")
    assert code == 2 and len(err) == 1 and "--max-cost" in err[0], err
    assert calls.job_ids == []


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e9"])
def test_grace_must_be_a_finite_number_of_seconds(
    tmp_path: Path,
    calls: Calls,
    three_tiers: Path,
    jobs: Path,
    capsys: pytest.CaptureFixture[str],
    value: str,
) -> None:
    """`--grace nan` was refused as "greater than or equal to 0", which it is not about; `inf`
    would wait forever after Ctrl-C. One line naming the option and the range, exit 2."""
    code, err = run_quiet(capsys, "run", jobs, "-c", three_tiers, f"--grace={value}")
    assert code == 2 and len(err) == 1 and "--grace" in err[0] and "0 to 86,400" in err[0], err
    assert calls.job_ids == []


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("timeout_s = inf", "timeout_s"),
        ("timeout_s = nan", "timeout_s"),
        ("timeout_s = 1e300", "timeout_s"),
        ("circuit_reset_s = inf", "circuit_reset_s"),
    ],
)
def test_non_finite_numbers_in_the_config(
    tmp_path: Path,
    calls: Calls,
    jobs: Path,
    capsys: pytest.CaptureFixture[str],
    setting: str,
    key: str,
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(THREE_TIERS.replace('[backends.a]\nkind = "llamacpp"', f'[backends.a]\nkind = "llamacpp"\n{setting}'), encoding="utf-8")  # fmt: skip
    code, err = run_quiet(capsys, "run", jobs, "-c", cfg)
    assert code == 2 and f"backends.a.{key}" in err[0], err
    assert calls.job_ids == []


def tierline_sh(script: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """`tierline` in a shell, so redirections like `<&-` are the shell's own."""
    env = {
        **os.environ,
        "TIERLINE_HOME": str(cwd / "home"),
        "TIERLINE": f"{sys.executable} -m tierline",
    }
    return subprocess.run(["sh", "-c", script], cwd=cwd, env=env, capture_output=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("redirect", "words"),
    [("- <&-", "standard input is closed"), ("jobs.jsonl >&-", "standard output is closed")],
)
def test_closed_stdin_or_stdout(tmp_path: Path, redirect: str, words: str) -> None:
    """`tierline run - <&-` and `tierline run jobs >&-`: exit 2 with one line."""
    jobs_file(tmp_path / "jobs.jsonl", 2)
    proc = tierline_sh(f"$TIERLINE run --ledger l.db {redirect}", tmp_path)
    err = proc.stderr.decode().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and words in err[0], err


# --- The reader of the results goes away ----------------------------------------------------


@pytest.fixture
def vllm() -> Iterator[FakeVLLM]:
    with FakeVLLM(model="m", latency_ms=20) as server:
        yield server


def ledger_calls(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])


PIPE_JOBS = 400
WINDOW = 2 * 8  # the scheduler's in-flight window for max_concurrency 8


@pytest.mark.slow
def test_closed_pipe_stops_dispatch_quietly(tmp_path: Path, vllm: FakeVLLM) -> None:
    """`tierline run ... | head -1`: no more jobs sent once the reader left, every call that was
    made is in the ledger, exit 141 with at most one line on stderr."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", PIPE_JOBS)
    cfg = vllm_config(tmp_path / "t.toml", vllm)
    proc = start_run(
        [str(jobs), "-c", str(cfg), "--ledger", str(tmp_path / "l.db")], tmp_path / "home"
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == ExitCode.BROKEN_PIPE, err
    assert first["status"] == "ok"
    assert len(err.splitlines()) <= 1 and "Traceback" not in err and "exception" not in err, err
    sent = sum(requested_ids(vllm).values())
    # What was written before the pipe broke (at most a pipe buffer's worth) plus the window.
    assert sent <= 64 * 1024 // 300 + WINDOW < PIPE_JOBS, sent
    assert ledger_calls(tmp_path / "l.db") == sent


@pytest.mark.slow
def test_full_disk_on_stdout_is_one_error_line(tmp_path: Path, vllm: FakeVLLM) -> None:
    """`> /dev/full`: one line naming stdout and the reason, exit 74, dispatch stopped."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", PIPE_JOBS)
    cfg = vllm_config(tmp_path / "t.toml", vllm)
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "tierline", "run", str(jobs), "-c", str(cfg), "--ledger", str(tmp_path / "l.db")],
            stdout=full, stderr=subprocess.PIPE, env={**os.environ, "TIERLINE_HOME": str(tmp_path / "home")}, timeout=60,
        )  # fmt: skip
    err = proc.stderr.decode().splitlines()
    assert proc.returncode == ExitCode.OUTPUT_FAILED and len(err) == 1, err
    assert "stdout" in err[0] and "No space left on device" in err[0]
    sent = sum(requested_ids(vllm).values())
    assert sent <= 2 * WINDOW and ledger_calls(tmp_path / "l.db") == sent
