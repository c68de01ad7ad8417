"""Exit 70 end to end: a real `tierline run` subprocess whose user plugin (a backend factory
registered with `tierline.dispatch.registry.register`) raises an unexpected exception that
quotes the API key, in the middle of a run that has already answered other jobs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import FakeOpenAI
from tierline.config import config_from_mapping
from tierline.dispatch import registry
from tierline.dispatch.base import Request
from tierline.errors import ExitCode
from tierline.jobs import Result, jobs_from_lines
from tierline.run import run_jobs
from tierline.testing import FunctionBackend

pytestmark = pytest.mark.slow

KEY = "sk-test-SECRET-plugin-key-5e4d3c2b1a"

# A user's program: tierline's CLI with a plugin whose factory for backend "buggy" has a bug.
WITH_PLUGIN = """
import os
from tierline.dispatch import registry
real = registry.FACTORIES["openai-compatible"]
def factory(name, config):
    if name == "buggy":
        raise RuntimeError("plugin bug, key " + os.environ["FAKE_API_KEY"])
    return real(name, config)
registry.register("openai-compatible", factory)
from tierline.cli import cli_exit
cli_exit()
"""


def config(path: Path, url: str) -> Path:
    # Tier 3 starts at a backend nobody listens on, so its job falls back to "buggy", which
    # is created only then (a fallback is not warmed): after the tier-1 jobs were sent.
    backend = 'kind = "openai-compatible"\nmodel = "m"\napi_key_env = "FAKE_API_KEY"\n'
    backend += "max_attempts = 1\n"
    path.write_text(
        f'[backends.good]\n{backend}base_url = "{url}"\n'
        f'[backends.down]\n{backend}base_url = "http://127.0.0.1:9/v1"\n'
        f'[backends.buggy]\n{backend}base_url = "{url}"\n'
        "[tiering]\nclassifier = false\n"
        '[routes]\n1 = ["good"]\n2 = ["good"]\n3 = ["down", "buggy"]\n',
        encoding="utf-8",
    )
    return path


def chats(server: FakeOpenAI) -> int:
    return len([r for r in server.requests if r.path.endswith("/chat/completions")])


def tierline(args: list[str], tmp: Path, *, plugin: bool) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "FAKE_API_KEY": KEY, "TIERLINE_HOME": str(tmp / "home")}
    env.pop("TIERLINE_DEBUG", None)
    program = ["-c", WITH_PLUGIN] if plugin else ["-m", "tierline"]
    return subprocess.run(
        [sys.executable, *program, "run", *args], capture_output=True, env=env, timeout=120
    )


def test_a_plugin_bug_exits_70_in_one_line_and_keeps_the_results(tmp_path: Path) -> None:
    """Exit 70; stderr is one line naming the exception, no traceback, no key; the jobs in
    flight finish and their results stay in `out.jsonl.partial` (fsynced, not renamed: the run
    did not end), their calls in the ledger; the same command without the bug resumes, sending
    only the job that had none."""
    jobs = tmp_path / "jobs.jsonl"
    tiers = [1, 1, 1, 1, 1, 3]
    jobs.write_text(
        "".join(
            json.dumps({"id": f"j{i}", "prompt": f"job {i}", "tier": t}) + "\n"
            for i, t in enumerate(tiers)
        )
    )
    out, ledger = tmp_path / "out.jsonl", tmp_path / "l.db"
    args = [str(jobs), "-c", "", "-o", str(out), "--ledger", str(ledger)]
    with FakeOpenAI(api_key=KEY) as server:
        args[2] = str(config(tmp_path / "t.toml", server.base_url))
        crashed = tierline(args, tmp_path, plugin=True)
        stderr = crashed.stderr.decode()
        assert crashed.returncode == ExitCode.INTERNAL, stderr
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
        assert stderr.startswith("tierline: internal error: RuntimeError: plugin bug, key ")
        assert "[redacted]" in stderr and "TIERLINE_DEBUG=1" in stderr
        assert crashed.stdout == b""
        partial = Path(f"{out}.partial")
        assert not out.exists() and partial.exists()
        kept = [json.loads(line) for line in partial.read_bytes().splitlines()]
        assert sorted((r["id"], r["status"]) for r in kept) == [(f"j{i}", "ok") for i in range(5)]
        written = partial.read_bytes() + ledger.read_bytes() + crashed.stdout + crashed.stderr
        # the run's row is closed, not left `running`: its results so far, its calls' cost
        with sqlite3.connect(ledger) as db:
            row = db.execute("SELECT status, jobs, ok, finished_at FROM runs").fetchall()
        assert [r[:3] for r in row] == [("aborted", 5, 5)] and row[0][3] is not None
        assert KEY.encode() not in written and KEY[8:].encode() not in written
        sent_before = chats(server)

        resumed = tierline(args, tmp_path, plugin=False)
        assert resumed.returncode == 0, resumed.stderr.decode()
        assert chats(server) - sent_before == 1  # only j5, now answered by "buggy"
    final = {r["id"]: r for r in map(json.loads, out.read_bytes().splitlines())}
    assert sorted(final) == [f"j{i}" for i in range(6)]
    assert final["j5"]["backend"] == "buggy" and final["j5"]["status"] == "ok"
    assert all(final[r["id"]] == r for r in kept)  # the kept results, unchanged


async def test_a_bug_in_one_job_ends_the_run_instead_of_dropping_the_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job whose path raises (here its backend's factory) used to vanish with its task: the
    run went on and ended normally, one result short. Now the run stops sending, lets the calls
    in flight finish, emits their results, and raises the bug."""
    sent: list[str | None] = []

    def answer(request: Request) -> str:
        sent.append(request.job_id)
        return "ok"

    def broken(name: str, config: object) -> FunctionBackend:
        raise RuntimeError(f"cannot build {name}")

    monkeypatch.setitem(registry.FACTORIES, "llamacpp", broken)
    config = config_from_mapping(
        {
            "backends": {"good": {"kind": "llamacpp"}, "bad": {"kind": "llamacpp"}},
            "routes": {"1": "good", "2": "good", "3": "bad"},  # in-process: built when first used
            "tiering": {"classifier": False},
        },
        origin="test",
    )
    lines = [json.dumps({"id": f"j{i}", "prompt": "p", "tier": 1}) for i in range(300)]
    lines[3] = json.dumps({"id": "j3", "prompt": "p", "tier": 3})
    results: list[Result] = []
    good = FunctionBackend(answer, name="good")
    with pytest.raises(RuntimeError, match="cannot build bad"):
        await run_jobs(
            jobs_from_lines(lines),
            config=config,
            sink=results.append,
            backends={"good": good},
            max_in_flight=4,
        )
    assert len(results) == len(sent) < 299  # stopped early; every call sent has its result
