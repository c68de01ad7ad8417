"""docs/cli.md is the current --help of every command; the docs name every code and field."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections import Counter

import pytest

from tests.conftest import REPO
from tierline.errors import ExitCode
from tierline.jobs import Result
from tierline.ledger.migrations import migrate
from tierline.run import RunSummary, Tally

DOCS = REPO / "docs"


def test_cli_reference_is_current() -> None:
    """docs/cli.md equals what scripts/cli_reference.py generates now."""
    script = REPO / "scripts" / "cli_reference.py"
    done = subprocess.run(
        [sys.executable, str(script), "--stdout"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    current = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert current == done.stdout, (
        "docs/cli.md is stale: run `.venv/bin/python scripts/cli_reference.py` and commit it"
    )


def test_cli_reference_covers_every_command() -> None:
    """Every command group's subcommands have a section in docs/cli.md."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for command in ("run", "classify", "plan", "init", "ledger merge", "batch collect"):
        assert f"## `tierline {command}`" in text


def reference_table_keys(heading: str) -> set[str]:
    """The backticked first cells of the table under a heading of docs/reference.md."""
    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)`", section, flags=re.MULTILINE))


def test_reference_lists_every_exit_code() -> None:
    """docs/reference.md has a row for each ExitCode value, and no other."""
    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    documented = {int(c) for c in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}


def test_reference_lists_every_result_field() -> None:
    """Every key of a result line (Result.to_dict plus run's `key`) is documented."""
    fields = {*Result(id="x", line=1, source="-", status="ok").to_dict(), "key"}
    assert fields - reference_table_keys("Result lines") == set()


def test_reference_lists_every_ledger_column() -> None:
    """Every table and column the migrations create is in the ledger section."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    documented = reference_table_keys("Ledger")
    tables = [
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not row[0].startswith("sqlite_")
    ]
    missing = []
    for table in tables:
        for column in conn.execute(f"PRAGMA table_info({table})"):
            if f"{table}.{column[1]}" not in documented:
                missing.append(f"{table}.{column[1]}")
    assert not missing, f"docs/reference.md, section Ledger, lacks: {missing}"


@pytest.mark.parametrize(
    "page", ["README.md", *(f"docs/{p.name}" for p in sorted(DOCS.glob("*.md")))]
)
def test_relative_links_resolve(page: str) -> None:
    """Every relative link in README and docs/ names a file that exists."""
    path = REPO / page
    text = path.read_text(encoding="utf-8")
    broken = [
        target
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
        if "://" not in target and not (path.parent / target).exists()
    ]
    assert not broken, f"{page}: broken links {broken}"


def test_readme_indexes_every_docs_page() -> None:
    """README's Documentation section links every page in docs/."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    index = readme.split("## Documentation\n", 1)[1].split("\n## ", 1)[0]
    missing = [p.name for p in DOCS.glob("*.md") if f"(docs/{p.name})" not in index]
    assert not missing, f"README's Documentation section lacks {missing}"


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ({"ok": 2}, ExitCode.OK),
        ({"ok": 1, "error": 1}, ExitCode.JOBS_FAILED),
        ({"error": 1, "pending": 1}, ExitCode.PENDING),
        ({"error": 1, "pending": 1, "skipped_budget": 1}, ExitCode.BUDGET),
    ],
)
def test_reference_exit_code_precedence(statuses: dict[str, int], code: ExitCode) -> None:
    """docs/reference.md: a finished run reports the budget (3) over pending batches (4) over
    failed jobs (1)."""
    tally = Tally(jobs=sum(statuses.values()), by_status=Counter(statuses))
    assert RunSummary(None, "test", tally, 0.0).exit_code == code
