"""What a run shows: the live line on a terminal (rendered by rich into a buffer, and the real
CLI under a pseudo-terminal), nothing but one summary line on a pipe, nothing with -q."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.fakes import FakeOpenAI
from tierline.cli import batch as batch_cli
from tierline.cli import main
from tierline.cli.progress import run_progress
from tierline.dispatch import batch as batches
from tierline.jobs import Result

from .conftest import write_jsonl

KEY = "sk-progress-test-0001"


def result(i: int, status: str = "ok", cost: float | None = 0.01) -> Result:
    return Result(id=str(i), line=i, source="x", status=status, cost_usd=cost)  # type: ignore[arg-type]


def frames(text: str) -> list[str]:
    """The lines rich drew (each redraw starts with a carriage return and erase-line)."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return [f.strip() for f in re.split(r"[\r\n]", plain) if f.strip()]


def test_terminal_line_has_rate_eta_spend_cap_and_failures() -> None:
    """On an 80-column terminal: done/total, jobs/s, ETA, failures, spend of the cap, unpriced."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80, color_system=None)
    with run_progress(3000, console=console, quiet=False, max_cost_usd=5.0) as advance:
        for i, (status, cost) in enumerate(
            [("ok", 0.01), ("error", 0.0), ("ok", None), ("ok", 0.02)]
        ):
            advance(result(i, status, cost))
            time.sleep(0.02)  # so rich has two samples to measure a rate from
    last = frames(buf.getvalue())[-1]
    assert last.startswith("tierline 4/3,000, ")
    assert re.search(r"[\d.]+ jobs/s, ETA \d+:\d\d:\d\d, 1 failed, \$0\.0300 of \$5\.00 cap", last)
    assert "(+1" in last  # the unpriced job, cut short at 80 columns


def test_a_resume_leaves_kept_jobs_out_of_the_total() -> None:
    """10 lines, 4 of them kept from the interrupted attempt: the line counts to 6/6 (with a
    full bar on a 120-column terminal)."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with run_progress(10, console=console, quiet=False, kept=lambda: 4) as advance:
        for i in range(6):
            advance(result(i))
    assert frames(buf.getvalue())[-1].startswith("tierline " + "━" * 20 + " 6/6, ")


def test_reading_a_pipe_shows_no_eta_and_no_cap() -> None:
    """No total (stdin): the count, no ETA; no --max-cost: no cap."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with run_progress(None, console=console, quiet=False) as advance:
        advance(result(1))
    last = frames(buf.getvalue())[-1]
    assert last.startswith("tierline 1, ") and "ETA" not in last and "cap" not in last


@pytest.mark.parametrize("quiet", [False, True])
def test_no_progress_off_a_terminal_or_quiet(quiet: bool) -> None:
    """A file or pipe console (or -q on a terminal) gets nothing at all."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=quiet, width=120)
    with run_progress(10, console=console, quiet=quiet) as advance:
        advance(result(1))
    assert buf.getvalue() == ""


CONFIG = """
[backends.api]
kind = "openai-compatible"
base_url = "{url}"
model = "gpt-4o-mini"
api_key_env = "PROGRESS_KEY"
max_concurrency = 4
price = {{ input_per_mtok = 1, output_per_mtok = 2 }}
[routes]
1 = ["api"]
2 = ["api"]
3 = ["api"]
"""


def setup_run(tmp_path: Path, url: str, n: int, *, bad: int = 0) -> Path:
    (tmp_path / "tierline.toml").write_text(CONFIG.format(url=url))
    lines = [json.dumps({"id": f"j{i}", "prompt": f"say {i}", "max_tokens": 8}) for i in range(n)]
    lines += [
        json.dumps({"id": f"bad{i}", "prompt": f"fail {i}", "max_tokens": 8}) for i in range(bad)
    ]
    return write_jsonl(tmp_path / "jobs.jsonl", lines)


def test_pipe_gets_one_summary_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """stderr to a pipe: no progress, one line with counts, cost, savings and the run id; with
    -q and every job ok, nothing at all."""
    monkeypatch.setenv("PROGRESS_KEY", KEY)
    with FakeOpenAI(api_key=KEY) as srv:
        jobs = setup_run(tmp_path, srv.base_url, 5)
        assert main(["run", str(jobs), "-o", str(tmp_path / "out.jsonl")]) == 0
        err = capfd.readouterr().err
        assert len(err.splitlines()) == 1, err
        assert re.match(
            r"tierline: 5 job\(s\) in [\d.]+s, 0 failed \(5 ok\); cost \$0\.\d+; savings: ", err
        )
        assert "; run " in err and "\x1b" not in err
        assert main(["run", str(jobs), "-o", str(tmp_path / "out2.jsonl"), "-q"]) == 0
        assert capfd.readouterr().err == ""


def test_quiet_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """-q and a failed job: exit 1 and one line naming the failure (for cron mail)."""
    monkeypatch.setenv("PROGRESS_KEY", KEY)
    with FakeOpenAI(api_key=KEY) as srv:
        srv.enqueue_fault(status=400)
        jobs = setup_run(tmp_path, srv.base_url, 3)
        assert main(["run", str(jobs), "-o", str(tmp_path / "out.jsonl"), "-q"]) == 1
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and re.search(r", 1 failed \(1 error, 2 ok\); cost ", err), (
        err
    )


def test_real_terminal_draws_the_line_and_no_batch_bar(tmp_path: Path) -> None:
    """`tierline run` with stderr on a pseudo-terminal: the live line with rate, ETA and spend
    against --max-cost is drawn, no `batches` bar (there are no provider batches), and the
    multi-line summary ends the run."""
    with FakeOpenAI(api_key=KEY, latency_ms=20) as srv:
        jobs = setup_run(tmp_path, srv.base_url, 60)
        master, slave = pty.openpty()
        env = {**os.environ, "PROGRESS_KEY": KEY, "COLUMNS": "100", "TERM": "xterm"}
        env.pop("NO_COLOR", None)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tierline",
                "run",
                str(jobs),
                "-o",
                "out.jsonl",
                "--max-cost",
                "5",
            ],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0
        os.close(master)
    drawn = frames(b"".join(chunks).decode())
    lines = [f for f in drawn if f.startswith("tierline ") and "/60" in f]
    assert lines, drawn
    assert re.search(r"60/60, [\d.]+ jobs/s, ETA 0:00:00, \$0\.\d{4} of \$5\.00 cap", lines[-1])
    assert not [f for f in drawn if "batches" in f]
    assert any(f.startswith("tierline: 60 job(s)") for f in drawn)
    assert any(f.startswith("status: ok: 60") for f in drawn)  # the terminal summary


def test_batch_bar_only_when_a_batch_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """`batches` is drawn on a terminal only once an open batch reports, with its counts from
    the first frame (never `0/?`); a run with no provider batches draws nothing."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(batch_cli, "err_console", console)
    with batch_cli.batch_progress(quiet=False):
        pass
    assert buf.getvalue() == ""
    with batch_cli.batch_progress(quiet=False) as show:
        assert show is not None
        show(batches.Progress(1, 0, 10, 4, {"in_progress": 1}))
    drawn = frames(buf.getvalue())
    assert drawn and all("4/10" in f and "in_progress: 1" in f for f in drawn)
