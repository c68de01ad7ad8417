"""API keys never appear in results, the ledger, messages or tracebacks: real `tierline run`
subprocesses with fake keys set, a failing auth path (401) and a crash, TIERLINE_DEBUG on and off,
and every byte they write scanned for the keys."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeOpenAI

from .conftest import jobs_file

pytestmark = pytest.mark.slow

SECRETS = {
    "OPENAI_API_KEY": "sk-test-SECRET-0penai-key-9f8e7d6c5b4a",
    "ANTHROPIC_API_KEY": "sk-ant-test-SECRET-anthropic-1a2b3c4d",
}


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-the-right-key-only-the-server-knows") as server:
        yield server


def config(path: Path, server: FakeOpenAI) -> Path:
    path.write_text(
        f"""
[backends.api]
kind = "openai"
model = "gpt-4o-mini"
base_url = "{server.base_url}"
max_attempts = 2
[routes]
1 = ["api"]
2 = ["api"]
3 = ["api"]
""",
        encoding="utf-8",
    )
    return path


# tierline with a bug planted in the run: the exception's message quotes a key, as an SDK
# error or a repr of a client object might.
CRASHING = """
import os, sys
import tierline.cli.run as run
def bug(*args, **kwargs):
    raise RuntimeError("bug with key " + os.environ["OPENAI_API_KEY"])
run.run_command = bug
from tierline.cli import cli_exit
cli_exit()
"""


def run(args: list[str], tmp: Path, debug: bool, *, crash: bool = False) -> bytes:
    env = {**os.environ, **SECRETS, "TIERLINE_HOME": str(tmp / "home")}
    env.pop("TIERLINE_DEBUG", None)
    if debug:
        env["TIERLINE_DEBUG"] = "1"
    program = ["-c", CRASHING] if crash else ["-m", "tierline"]
    proc = subprocess.run(
        [sys.executable, *program, *args], capture_output=True, env=env, timeout=60
    )
    return proc.stdout + proc.stderr + str(proc.returncode).encode()


def everything_written(tmp: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(tmp.rglob("*")) if p.is_file())


@pytest.mark.parametrize("debug", [False, True])
def test_keys_never_leak(tmp_path: Path, openai: FakeOpenAI, debug: bool) -> None:
    """401 on every call, then a crash: no key in stdout, stderr, results, ledger or logs."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 5)
    cfg = config(tmp_path / "tierline.toml", openai)
    ledger = tmp_path / "ledger.db"
    out = run(["run", str(jobs), "-c", str(cfg), "--ledger", str(ledger)], tmp_path, debug)
    out += run(["run", str(jobs), "-c", str(cfg), "-o", str(tmp_path / "o.jsonl")], tmp_path, debug)
    assert b"401" in out or b"Incorrect API key" in out  # the auth path really failed
    crash = run(
        ["run", str(jobs), "-c", str(cfg), "--ledger", str(ledger)], tmp_path, debug, crash=True
    )
    assert crash.endswith(b"70") and (b"Traceback" in crash) == debug
    assert b"bug with key [redacted]" in crash
    scanned = out + crash + everything_written(tmp_path)
    assert ledger.exists() and len(scanned) > 1000
    for name, key in SECRETS.items():
        assert key.encode() not in scanned, name
        assert key[8:].encode() not in scanned, name  # nor a key with its prefix cut off


URL_SECRET = "pw-SECRET-in-url-7c6b5a"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"http://user:{URL_SECRET}@127.0.0.1:9/v1", "must not contain credentials"),
        (f"http://127.0.0.1:9/v1?api-key={URL_SECRET}", "must not have a query string"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [["run", "JOBS", "-o", "OUT"], ["backends", "check"], ["backends", "check", "--json"]],
)
def test_credentials_in_a_base_url_are_a_config_error_that_does_not_repeat_them(
    tmp_path: Path, url: str, words: str, command: list[str]
) -> None:
    """Issue 13: a user:password@ or ?api-key= URL was stored in calls.endpoint and printed by
    `backends check`; the user:pass replica failed every job. Now it is refused when the config
    is read (exit 2, before any request), and nothing written repeats the secret."""
    jobs = jobs_file(tmp_path / "jobs.jsonl", 3)
    cfg = tmp_path / "tierline.toml"
    cfg.write_text(
        f'[backends.gpu]\nkind = "openai-compatible"\nmodel = "m"\nbase_urls = ["http://127.0.0.1:9/v1", "{url}"]\n'
        '[routes]\n1 = "gpu"\n2 = "gpu"\n3 = "gpu"\n',
        encoding="utf-8",
    )
    args = [{"JOBS": str(jobs), "OUT": str(tmp_path / "out.jsonl")}.get(a, a) for a in command]
    out = run([*args, "-c", str(cfg)], tmp_path, debug=True)
    assert out.endswith(b"2") and words.encode() in out and b"backends.gpu.base_urls" in out
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != cfg)
    assert URL_SECRET.encode() not in out + written
    assert not (tmp_path / "out.jsonl").exists()
