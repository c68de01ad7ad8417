"""--shard splits jobs by a stable hash of their id; `tierline ledger merge` joins the ledgers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tierline.cli import main
from tierline.errors import UsageError
from tierline.ledger.merge import merge_ledgers
from tierline.shard import Shard, shard_of

from .conftest import Calls, jobs_file, read_results


def test_shard_hash_is_pinned() -> None:
    """The partition is part of the interface: hosts on other versions must agree."""
    assert [shard_of(f"j{i}", 4) for i in range(8)] == [2, 2, 0, 0, 0, 3, 0, 3]


@pytest.mark.parametrize("text", ["0/4", "5/4", "1", "a/b", "1/0"])
def test_bad_shard_is_a_usage_error(text: str) -> None:
    """I/N must be 1 <= I <= N."""
    with pytest.raises(UsageError):
        Shard.parse(text)


def test_shards_cover_every_job_once(tmp_path: Path, calls: Calls, three_tiers: Path) -> None:
    """Three shards run on three 'hosts': each job (bad lines included) lands in exactly one."""
    jobs = jobs_file(tmp_path / "j.jsonl", 90)
    with jobs.open("a", encoding="utf-8") as fh:
        fh.write('{"id": "broken"}\n{not json\n')
    ids: list[str | None] = []
    for i in (1, 2, 3):
        out = tmp_path / f"out{i}.jsonl"
        args = ["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]
        main([*args, "--shard", f"{i}/3", "--ledger", str(tmp_path / f"l{i}.db")])
        part = read_results(out)
        assert 10 < len(part) < 50  # a fair split, not all in one
        ids += [r["id"] or f"line {r['line']}" for r in part]
    assert sorted(ids) == sorted([f"j{i}" for i in range(90)] + ["broken", "line 92"])


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_merge_is_complete_and_idempotent(tmp_path: Path, calls: Calls, three_tiers: Path) -> None:
    """Merging two hosts' ledgers twice gives every run and call exactly once."""
    jobs = jobs_file(tmp_path / "j.jsonl", 30)
    for i in (1, 2):
        args = ["run", str(jobs), "-o", str(tmp_path / f"o{i}.jsonl"), "-c", str(three_tiers)]
        main([*args, "-q", "--shard", f"{i}/2", "--ledger", str(tmp_path / f"l{i}.db")])
    merged = tmp_path / "merged.db"
    sources = [tmp_path / "l1.db", tmp_path / "l2.db"]
    first = merge_ledgers(sources, merged)
    again = merge_ledgers(sources, merged)
    assert (first.runs_added, again.runs_added, again.runs_unchanged) == (2, 0, 2)
    calls_in = sum(len(rows(s, "SELECT * FROM calls")) for s in sources)
    assert calls_in == 30 == len(rows(merged, "SELECT * FROM calls"))
    assert sorted(r[0] for r in rows(merged, "SELECT job_id FROM calls")) == sorted(
        f"j{i}" for i in range(30)
    )
    assert len(rows(merged, "SELECT * FROM runs")) == 2


def test_merge_catches_up_a_run_that_grew(tmp_path: Path) -> None:
    """A run merged while in progress is replaced by its fuller copy, without duplicates."""
    from tierline.jobs import Usage
    from tierline.ledger.store import CallRecord, Ledger

    src, merged = tmp_path / "src.db", tmp_path / "merged.db"
    with Ledger(src) as book:
        run = book.start_run(command="run", config_origin="t", inputs=["j"])
        call = CallRecord("j1", 1, "a", "m", "ok", Usage(1, 1), 0.0, "t", 0.1)
        book.record_call(run, call)
        merge_ledgers([src], merged)
        book.record_call(run, CallRecord("j2", 1, "a", "m", "ok", Usage(1, 1), 0.0, "t", 0.1))
    report = merge_ledgers([src], merged)
    assert report.runs_updated == 1
    assert sorted(r[0] for r in rows(merged, "SELECT job_id FROM calls")) == ["j1", "j2"]


def test_merge_cli(
    tmp_path: Path, calls: Calls, three_tiers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tierline ledger merge A B -o M` exits 0 and says what it did; a missing file is exit 2."""
    jobs = jobs_file(tmp_path / "j.jsonl", 3)
    main(
        [
            "run",
            str(jobs),
            "-o",
            str(tmp_path / "o.jsonl"),
            "-c",
            str(three_tiers),
            "-q",
            "--ledger",
            str(tmp_path / "a.db"),
        ]
    )
    assert main(["ledger", "merge", str(tmp_path / "a.db"), "-o", str(tmp_path / "m.db")]) == 0
    assert "1 run(s) added" in capsys.readouterr().err
    assert main(["ledger", "merge", str(tmp_path / "nope.db"), "-o", str(tmp_path / "m.db")]) == 2


def v1_ledger(path: Path) -> None:
    """A ledger as the first tierline wrote it: only m001's tables, one run with one call."""
    from tierline.ledger.migrations import MIGRATIONS

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE _tierline_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    MIGRATIONS[0](conn)
    conn.execute("INSERT INTO _tierline_migrations VALUES ('m001_initial', 'then')")
    conn.execute(
        "INSERT INTO runs (id, started_at, command, config_origin, inputs) "
        "VALUES ('old-run', 'then', 'run', 'test', 'a.jsonl')"
    )
    conn.execute(
        "INSERT INTO calls (run_id, job_id, backend, model, status, input_tokens, cost_micros, "
        "latency_s, created_at) VALUES ('old-run', 'j-old', 'b', 'm', 'ok', 7, 42, 0.5, 'then')"
    )
    conn.close()


def newer_ledger(path: Path) -> None:
    """A ledger from a future version: a column and a run-keyed table this version lacks."""
    from tierline.jobs import Usage
    from tierline.ledger.store import CallRecord, Ledger

    with Ledger(path) as book:
        run = book.start_run(command="run", config_origin="t", inputs=["j"])
        book.record_call(run, CallRecord("j-new", 1, "a", "m", "ok", Usage(3, 4), 9, "t", 0.1))
        book.conn.execute("ALTER TABLE calls ADD COLUMN carbon_grams REAL")
        book.conn.execute("UPDATE calls SET carbon_grams = 1.5")
        book.conn.execute("CREATE TABLE audits (run_id TEXT, note TEXT)")
        book.conn.execute("INSERT INTO audits VALUES (?, 'x')", (run,))


def test_merge_across_versions(tmp_path: Path) -> None:
    """Ledgers from an older and a newer tierline merge by the columns they share: old rows get
    the current defaults, a newer column or table is left out (and reported), nothing else lost."""
    old, new, merged = tmp_path / "old.db", tmp_path / "new.db", tmp_path / "merged.db"
    v1_ledger(old)
    newer_ledger(new)
    report = merge_ledgers([old, new], merged)
    assert report.runs_added == 2 and report.ignored_tables == {"audits"}
    got = rows(
        merged,
        "SELECT job_id, input_tokens, output_tokens, cost_nanos, hop, batch FROM calls "
        "ORDER BY job_id",
    )
    assert got == [("j-new", 3, 4, 9, 1, 0), ("j-old", 7, 0, 42_000, 1, 0)]  # micro-$ -> nano-$
    columns = {r[1] for r in rows(merged, "PRAGMA table_info(calls)")}
    assert "carbon_grams" not in columns and "check_failed" in columns
