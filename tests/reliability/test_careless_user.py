"""What a careless or hostile user does to the real CLI, and what tierline must answer: the
exit code README documents, one clear line, nothing destroyed, nothing paid for a usage error."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tierline.cli import main
from tierline.errors import ExitCode
from tierline.resume import RunLock

from .conftest import Calls, jobs_file, read_results


def run_into_closed_pipe(args: list[str], home: Path) -> tuple[int, str]:
    """`tierline ARGS | head -1` where head has already left: stdout is a pipe nobody reads."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tierline", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, "TIERLINE_HOME": str(home)},
            timeout=120,
        )
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr.decode()


@pytest.mark.parametrize(
    "command",
    [
        ["classify", "{jobs}"],
        ["plan", "{jobs}", "-c", "{config}"],
        ["ledger", "summary", "--ledger", "{ledger}"],
        ["ledger", "runs", "--ledger", "{ledger}"],
        ["ledger", "export", "--ledger", "{ledger}", "--format", "jsonl"],
        ["--help"],
        ["run", "--help"],
    ],
    ids=lambda c: " ".join(w for w in c if not w.startswith("{")),
)
def test_every_command_exits_141_when_its_reader_is_gone(
    tmp_path: Path, calls: Calls, three_tiers: Path, command: list[str]
) -> None:
    """Not only `run`: README's 141 is "the reader of stdout went away" for any command.
    Click turned a broken pipe into exit 1, which under `set -o pipefail` reads as "some jobs
    failed" (classify) or as an error of the command."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 30)
    ledger = tmp_path / "l.db"
    out = tmp_path / "out.jsonl"
    assert (
        main(["run", str(jobs), "-c", str(three_tiers), "--ledger", str(ledger), "-o", str(out)])
        == 0
    )
    args = [w.format(jobs=jobs, config=three_tiers, ledger=ledger) for w in command]
    code, err = run_into_closed_pipe(args, tmp_path / "home")
    assert code == ExitCode.BROKEN_PIPE, err
    assert "Traceback" not in err and "Exception" not in err, err


def ledger_runs(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])


@pytest.mark.parametrize("cache", ["dir", "/dev/null", "input"])
def test_an_unusable_answer_cache_is_refused_before_the_run_starts(
    tmp_path: Path, calls: Calls, three_tiers: Path, cache: str
) -> None:
    """`--cache` that cannot be opened is a usage error like an unusable ledger: exit 2 with
    nothing sent and nothing left behind; it was found only after the output was locked and
    its `.partial` created and the run entered in the ledger (a 'running' row forever)."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 6)
    before = jobs.read_bytes()
    where = {"dir": str(tmp_path), "input": str(jobs)}.get(cache, cache)
    out, ledger = tmp_path / "out.jsonl", tmp_path / "l.db"
    args = ["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "--ledger", str(ledger)]
    assert main([*args, "--cache", where]) == ExitCode.USAGE
    assert calls.job_ids == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []
    assert ledger_runs(ledger) == 0
    assert jobs.read_bytes() == before


def test_output_over_the_answer_cache_is_refused(
    tmp_path: Path, calls: Calls, three_tiers: Path
) -> None:
    """`-o` the answer cache: the final rename would replace the cache with the results."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 6)
    cache = tmp_path / "answers.sqlite"
    args = ["run", str(jobs), "-c", str(three_tiers), "--ledger", str(tmp_path / "l.db")]
    assert main([*args, "-o", str(tmp_path / "first.jsonl"), "--cache", str(cache)]) == 0
    assert main([*args, "-o", str(cache), "--cache", str(cache)]) == ExitCode.USAGE
    assert len(calls.job_ids) == 6
    assert cache.read_bytes().startswith(b"SQLite format 3\x00")


@pytest.mark.parametrize("how", ["same name", "symlink"])
def test_the_ledger_as_answer_cache_is_refused(
    tmp_path: Path, calls: Calls, three_tiers: Path, how: str
) -> None:
    """`--cache` the ledger (by name or through a symlink): the cache's table landed among the
    run's money records. Exit 2 before the cache is opened: nothing sent, no new ledger run,
    no cache table in the ledger."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 6)
    ledger = tmp_path / "l.db"
    args = ["run", str(jobs), "-c", str(three_tiers), "--ledger", str(ledger)]
    assert main([*args, "-o", str(tmp_path / "first.jsonl")]) == 0
    tables_before = _tables(ledger)
    cache = ledger
    if how == "symlink":
        cache = tmp_path / "cache.sqlite"
        cache.symlink_to(ledger)
    assert main([*args, "-o", str(tmp_path / "second.jsonl"), "--cache", str(cache)]) == 2
    assert len(calls.job_ids) == 6
    assert ledger_runs(ledger) == 1
    assert _tables(ledger) == tables_before
    assert not (tmp_path / "second.jsonl").exists()


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@pytest.mark.parametrize("side", [".partial", ".lock", ".partial.resume", ".collect"])
def test_output_named_like_another_outputs_own_file_is_refused(
    tmp_path: Path, calls: Calls, three_tiers: Path, side: str
) -> None:
    """`-o out.jsonl.lock` while a run writes out.jsonl: the rename replaced that run's lock
    (a third run then locked the new file and wrote out.jsonl beside it) or its `.partial`
    (the running run then renamed the wrong results into place). Exit 2, nothing sent, the
    running run's files untouched."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 6)
    out = tmp_path / "out.jsonl"
    args = ["run", str(jobs), "-c", str(three_tiers), "--ledger", str(tmp_path / "l.db")]
    with RunLock(str(out)):
        lock = os.stat(f"{out}.lock")
        assert main([*args, "-o", f"{out}{side}"]) == ExitCode.USAGE
        assert os.path.samestat(lock, os.stat(f"{out}.lock"))
    assert calls.job_ids == []
    assert not os.path.exists(f"{out}{side}")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('3 = ["claude"]', "routes.3: unknown backend 'claude' (configured backends: a)"),
        ("", "routes: tier 3 has no route; every tier needs one"),
        (
            '3 = ["a"]\n[backends.b]\nkind = "openai-compatible"\nmodel = "m"\nbase_url = "gpu:8000"',
            "backends.b.base_urls: must be an http:// or https:// URL with a host",
        ),
    ],
)
def test_config_errors_read_file_key_reason(tmp_path: Path, table: str, message: str) -> None:
    """README: `tierline.toml: routes.3: unknown backend 'claude'`. pydantic's wording leaked
    in between: `tierline.toml: (top level): Value error, routes.3: ...`."""
    config = tmp_path / "tierline.toml"
    config.write_text(f'[backends.a]\nkind = "llamacpp"\n[routes]\n1 = ["a"]\n2 = ["a"]\n{table}\n')
    jobs = jobs_file(tmp_path / "jobs.jsonl", 1)
    proc = subprocess.run(
        [sys.executable, "-m", "tierline", "classify", str(jobs), "-c", str(config)],
        capture_output=True,
        env={**os.environ, "TIERLINE_HOME": str(tmp_path / "home")},
        timeout=120,
    )
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr.decode().strip() == f"tierline: error: {config}: {message}"


def tierline_sh(script: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """`tierline` in a shell, so that `>&-` and `<&-` are the shell's own."""
    env = {**os.environ, "TIERLINE_HOME": str(cwd / "home"), "TL": f"{sys.executable} -m tierline"}
    return subprocess.run(["sh", "-c", script], cwd=cwd, env=env, capture_output=True, timeout=120)


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("plan jobs.jsonl -c t.toml >&-", "standard output is closed"),
        ("plan jobs.jsonl -c t.toml --json >&-", "standard output is closed"),
        ("plan - -c t.toml <&-", "standard input is closed"),
        ("ledger summary --ledger l.db >&-", "standard output is closed"),
        ("ledger runs --ledger l.db --json >&-", "standard output is closed"),
        ("ledger export --ledger l.db >&-", "standard output is closed"),
        ("tiering eval jobs.jsonl >&-", "standard output is closed"),
    ],
)
def test_a_closed_stdin_or_stdout_is_a_usage_error_for_every_command(
    tmp_path: Path, calls: Calls, three_tiers: Path, command: str, words: str
) -> None:
    """`run` and `classify` said so (exit 2); the others crashed as a bug (exit 70,
    "AttributeError: 'NoneType' object has no attribute 'buffer'") or, worse, printed their
    data nowhere and exited 0 (`tiering eval`)."""
    jobs_file(tmp_path / "jobs.jsonl", 6)
    (tmp_path / "t.toml").write_text(three_tiers.read_text())
    args = ["-c", "t.toml", "--ledger", str(tmp_path / "l.db"), "-o", str(tmp_path / "o.jsonl")]
    assert main(["run", str(tmp_path / "jobs.jsonl"), *args]) == 0
    proc = tierline_sh(f"$TL {command}", tmp_path)
    err = proc.stderr.decode().splitlines()
    assert proc.returncode == ExitCode.USAGE and len(err) == 1 and words in err[0], err


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("run", "-o"),
        ("run", "-c"),
        ("run", "--ledger"),
        ("run", "--cache"),
        ("classify", "-o"),
        ("plan", "-c"),
    ],
)
def test_an_empty_path_is_a_usage_error(
    tmp_path: Path, calls: Calls, capsys: pytest.CaptureFixture[str], command: str, flag: str
) -> None:
    """`-c "$CONFIG"` with the variable unset: the run went on with the embedded default (or
    the default ledger, or the default cache) as if the flag had not been given; `-o ""`
    answered "is a directory; ... e.g. -o /results.jsonl". Exit 2, naming the flag."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 3)
    assert main([command, str(jobs), flag, ""]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert flag in err and "empty" in err, err
    assert calls.job_ids == []
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("which", ["input", "config"])
def test_a_file_name_that_is_not_utf8_is_a_usage_error(
    tmp_path: Path, calls: Calls, three_tiers: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    """A file name is bytes on Linux; a result line's `source` and the ledger's `inputs` and
    `config_origin` are UTF-8. An input or config named `j\\xff.jsonl` crashed the run as a bug
    (exit 70: "surrogates not allowed"), after its output was locked and its .partial made."""
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/odd-\xff.jsonl")
    jobs = jobs_file(tmp_path / "jobs.jsonl", 3)
    config, out = str(three_tiers), str(tmp_path / "out.jsonl")
    if which == "input":
        jobs = jobs_file(Path(odd), 3)
    else:
        config = odd
        Path(odd).write_text(three_tiers.read_text())
    args = ["run", str(jobs), "-c", config, "-o", out, "--ledger", str(tmp_path / "l.db")]
    assert main(args) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "odd-\\xff.jsonl" in err and "UTF-8" in err, err
    assert calls.job_ids == []
    assert not [p for p in os.listdir(tmp_path) if p.startswith(("out", "odd-\udcff.jsonl."))]
    if which == "input":
        assert main(["classify", str(jobs)]) == ExitCode.USAGE
    label = ["tiering", "label", str(jobs), "-c", config, "-o", str(tmp_path / "outcomes.jsonl")]
    assert main([*label, "--ledger", str(tmp_path / "l.db")]) == ExitCode.USAGE
    assert "odd-\\xff.jsonl" in capsys.readouterr().err
    assert calls.job_ids == []
    assert not (tmp_path / "outcomes.jsonl").exists()


def ledger_calls(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])


@pytest.fixture
def ledger(tmp_path: Path, calls: Calls, three_tiers: Path) -> Path:
    """A ledger with the calls of a 6-job run."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 6)
    path = tmp_path / "l.db"
    args = ["-c", str(three_tiers), "--ledger", str(path), "-o", str(tmp_path / "out.jsonl")]
    assert main(["run", str(jobs), *args]) == 0
    assert ledger_calls(path) == 6
    return path


@pytest.mark.parametrize("command", ["report", "export"])
@pytest.mark.parametrize("target", ["ledger", "wal", "fifo", "dir"])
def test_ledger_report_and_export_never_replace_what_they_read(
    tmp_path: Path, ledger: Path, command: str, target: str
) -> None:
    """`ledger export -o ledger.db` emptied the ledger (it was opened for writing while being
    read: 6 calls, then 0); `ledger report -o /dev/full` renamed the page over the device node
    (as root /dev/full became a regular file; here a FIFO stands in for it); `-o DIR` was an
    internal error. Like `run -o`: exit 2, nothing touched."""
    where = {
        "ledger": ledger,
        "wal": Path(f"{ledger}-wal"),
        "fifo": tmp_path / "fifo",
        "dir": tmp_path,
    }[target]
    reader = None
    if target == "fifo":
        os.mkfifo(where)
        reader = os.open(where, os.O_RDONLY | os.O_NONBLOCK)  # a writer must not block
    try:
        code = main(["ledger", command, "--ledger", str(ledger), "-o", str(where)])
    finally:
        if reader is not None:
            os.close(reader)
    assert code == ExitCode.USAGE
    assert ledger_calls(ledger) == 6
    assert stat.S_ISFIFO(os.stat(where).st_mode) if target == "fifo" else True
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "command",
    [["ledger", "summary"], ["ledger", "runs"], ["ledger", "export"], ["batch", "status"]],
)
def test_a_ledger_that_is_not_sqlite_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """`--ledger jobs.jsonl` (a typo): "internal error: DatabaseError: file is not a
    database" (exit 70) for the commands that read the ledger; `run` already said exit 2."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 2)
    before = jobs.read_bytes()
    assert main([*command, "--ledger", str(jobs)]) == ExitCode.USAGE
    assert "not a SQLite database" in capsys.readouterr().err
    assert jobs.read_bytes() == before


def test_metadata_nested_too_deep_is_an_invalid_line_not_a_crash(
    tmp_path: Path, calls: Calls, three_tiers: Path
) -> None:
    """Valid JSON nested 300 levels deep under `metadata` parsed, then crashed `run` (the
    resume key) and `classify` (the writer) as a bug: exit 70 on every rerun, so one line
    blocked the whole file. It is a bad line like any other: an error result naming where."""
    deep = '{"a":' * 300 + "1" + "}" * 300
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"id": "a", "prompt": "first", "tier": 1}\n'
        f'{{"id": "deep", "prompt": "second", "tier": 1, "metadata": {deep}}}\n'
        '{"id": "b", "prompt": "third", "tier": 1}\n'
    )
    out = tmp_path / "out.jsonl"
    args = ["-c", str(three_tiers), "--ledger", str(tmp_path / "l.db"), "-o", str(out)]
    assert main(["run", str(jobs), *args]) == ExitCode.JOBS_FAILED
    results = {r["id"]: r for r in read_results(out)}
    assert results["a"]["status"] == results["b"]["status"] == "ok"
    assert results["deep"]["status"] == "invalid"
    assert results["deep"]["error"]["message"].startswith(f"{jobs}:2: 'metadata'")
    assert sorted(calls.job_ids) == ["a", "b"]
    classified = tmp_path / "classified.jsonl"
    assert main(["classify", str(jobs), "-o", str(classified)]) == ExitCode.JOBS_FAILED
    assert [r.get("status") for r in read_results(classified)] == [None, "invalid", None]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "e", "prompt": ""}', "'prompt' must be a non-empty string, got an empty one"),
        ('{"id": "s", "prompt": "  "}', "'prompt' must be a non-empty string, got an empty one"),
        ('{"id": "t", "prompt": "x", "tier": true}', "'tier' must be 1, 2 or 3; got true"),
        ('{"id": "u", "prompt": "x", "tier": "2"}', "'tier' must be 1, 2 or 3; got \"2\""),
    ],
)
def test_job_errors_quote_the_line_in_json(tmp_path: Path, line: str, message: str) -> None:
    """The message reads in the user's terms: it said "must be a non-empty string, got
    string" for "" and quoted JSON's `true` as Python's `True`."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["classify", str(jobs), "-o", str(out)]) == ExitCode.JOBS_FAILED
    assert read_results(out)[0]["error"]["message"] == f"{jobs}:1: {message}"


@pytest.mark.parametrize("which", ["source", "output"])
def test_ledger_merge_with_a_file_that_is_not_sqlite_is_a_usage_error(
    tmp_path: Path, ledger: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    """`ledger merge jobs.jsonl -o all.db` or `-o jobs.jsonl`: exit 70, "file is not a
    database"; now exit 2 naming the file, which is left as it was."""
    jobs = tmp_path / "jobs.jsonl"
    before = jobs.read_bytes()
    sources, output = ([str(jobs)], str(tmp_path / "all.db"))
    if which == "output":
        sources, output = [str(ledger)], str(jobs)
    assert main(["ledger", "merge", *sources, "-o", output]) == ExitCode.USAGE
    assert "not a SQLite database" in capsys.readouterr().err
    assert jobs.read_bytes() == before


def test_a_missing_api_key_is_named_once_in_the_summary(tmp_path: Path) -> None:
    """Every job fails for one reason (no key): the one-line summary a cron mail shows must say
    which variable to set, not only "2 failed" with the reason buried in each result line. A
    real subprocess without OPENAI_API_KEY, `-q` (cron's setting) and stdout a file."""
    config = tmp_path / "tierline.toml"
    config.write_text(
        '[backends.gpt]\nkind = "openai"\nmodel = "gpt-4o-mini"\n'
        '[routes]\n1 = ["gpt"]\n2 = ["gpt"]\n3 = ["gpt"]\n',
        encoding="utf-8",
    )
    jobs = jobs_file(tmp_path / "jobs.jsonl", 3)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "tierline", "run", str(jobs), "-c", str(config), "-q"],
        capture_output=True,
        env={**env, "TIERLINE_HOME": str(tmp_path / "home")},
        timeout=120,
    )
    assert proc.returncode == ExitCode.JOBS_FAILED
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "3 failed" in lines[0]
    assert "most common error, 3 job(s): backend 'gpt': no API key" in lines[0]
    assert "OPENAI_API_KEY" in lines[0]
    assert len(proc.stdout.splitlines()) == 3
