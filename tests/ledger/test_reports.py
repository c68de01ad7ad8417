"""`tierline ledger summary|runs|export` over a small ledger."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tierline.cli import main
from tierline.errors import UsageError
from tierline.jobs import Usage
from tierline.ledger.reports import Filters, export_calls, parse_since, parse_until, summarize
from tierline.ledger.store import CallRecord, Ledger


def fill(path: Path) -> str:
    with Ledger(path) as ledger:
        run = ledger.start_run(command="run", config_origin="t", inputs=["a"], baseline_model="b")
        for tier, backend, cost, baseline in [
            (1, "local", 0, 900_000),  # nano-dollars
            (1, "local", 0, 1_100_000),
            (3, "claude", 700_000, 1_000_000),
            (2, "gpu", None, 500_000),
        ]:
            ledger.record_call(
                run,
                CallRecord(
                    f"j{tier}{backend}{cost}",
                    tier,
                    backend,
                    backend + "-m",
                    "ok",
                    Usage(10, 5),
                    cost,
                    "x",
                    0.1,
                    baseline_nanos=baseline,
                ),
            )
        ledger.finish_run(run, jobs=4, ok=4, failed=0, status="ok")
    return run


def test_summary_by_tier_counts_savings_like_for_like(tmp_path: Path) -> None:
    """Per tier: cost, baseline and savings; the unknown-price call is counted apart and left
    out of both cost and baseline."""
    fill(tmp_path / "l.db")
    with Ledger(tmp_path / "l.db") as ledger:
        rows = {r.group["tier"]: r for r in summarize(ledger.conn, ["tier"], Filters())}
        total = summarize(ledger.conn, [], Filters())[0]
    assert (rows[1].cost_nanos, rows[1].baseline_nanos, rows[1].savings_nanos) == (
        0,
        2_000_000,
        2_000_000,
    )
    assert (rows[3].savings_nanos, rows[3].savings_share) == (300_000, 0.3)
    assert (rows[2].unpriced_calls, rows[2].baseline_nanos) == (1, 0)
    assert (total.calls, total.cost_nanos, total.baseline_nanos, total.unpriced_calls) == (
        4,
        700_000,
        3_000_000,
        1,
    )


def test_summary_json_and_unknown_group(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """`ledger summary --by backend --json` prints one object per backend; a bad --by exits 2."""
    fill(tmp_path / "l.db")
    assert (
        main(["ledger", "summary", "--by", "backend", "--json", "--ledger", str(tmp_path / "l.db")])
        == 0
    )
    rows = json.loads(capsysbinary.readouterr().out)
    assert {r["group"]["backend"] for r in rows} == {"local", "claude", "gpu"}
    assert main(["ledger", "summary", "--by", "colour", "--ledger", str(tmp_path / "l.db")]) == 2


def test_export_csv_and_jsonl(tmp_path: Path) -> None:
    """Export writes every call with all columns; CSV costs are exact decimals, NULL is empty."""
    fill(tmp_path / "l.db")
    with Ledger(tmp_path / "l.db") as ledger:
        text = io.BytesIO()
        assert export_calls(ledger.conn, Filters(), "csv", text) == 4
        lines = io.BytesIO()
        export_calls(ledger.conn, Filters(), "jsonl", lines)
    rows = list(csv.DictReader(io.StringIO(text.getvalue().decode())))
    assert {r["cost_usd"] for r in rows} == {"0.000000000", "0.000700000", ""}
    assert {"endpoint", "price_version", "batch", "baseline_nanos", "hop"} <= set(rows[0])
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [r["cost_usd"] for r in records][2:] == [0.0007, None]


def test_runs_lists_the_run(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """`ledger runs --json` shows the run with its totals."""
    run = fill(tmp_path / "l.db")
    assert main(["ledger", "runs", "--json", "--ledger", str(tmp_path / "l.db")]) == 0
    [row] = json.loads(capsysbinary.readouterr().out)
    assert (row["id"], row["cost_nanos"], row["baseline_nanos"], row["unpriced_calls"]) == (
        run,
        700_000,
        3_000_000,
        1,
    )


def test_missing_ledger_is_a_usage_error(tmp_path: Path) -> None:
    """Reading a ledger that does not exist exits 2 rather than creating an empty one."""
    assert main(["ledger", "runs", "--ledger", str(tmp_path / "none.db")]) == 2
    assert not (tmp_path / "none.db").exists()


def test_since_parses_durations_and_dates() -> None:
    """--since takes 24h / 7d or an ISO date (UTC); anything else is a usage error."""
    now = datetime(2026, 11, 29, 12, tzinfo=timezone.utc)
    assert parse_since("24h", now=now) == "2026-11-28T12:00:00+00:00"
    assert parse_since("2026-11-01", now=now) == "2026-11-01T00:00:00+00:00"
    with pytest.raises(UsageError):
        parse_since("yesterday")


def test_until_includes_a_bare_dates_whole_day() -> None:
    """--until 2026-11-30 ends at the start of Dec 1 (the whole day counts); a time is exact."""
    assert parse_until("2026-11-30") == "2026-12-01T00:00:00+00:00"
    assert parse_until("2026-11-30T06:00") == "2026-11-30T06:00:00+00:00"


def test_summary_by_day_in_a_window_with_gpu_hours(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Calls on three days; `--by day --since 2026-11-02 --until 2026-11-03` keeps two days, in
    date order, with cost, baseline, savings and the busy time of gpu_hour_usd calls in
    GPU-hours (not the API's); the table ends with an `all` row summing them."""
    db = tmp_path / "l.db"
    with Ledger(db) as ledger:
        run = ledger.start_run(command="run", config_origin="t", inputs=[])
        for day, cost, busy in [
            (1, 100_000, 3600.0),  # nano-dollars
            (2, 200_000, 1800.0),
            (3, 50_000, 900.0),
            (3, 50_000, 0.0),
        ]:
            ledger.record_call(
                run,
                CallRecord(
                    f"d{day}",
                    1,
                    "gpu",
                    "m",
                    "ok",
                    Usage(10, 5),
                    cost,
                    "gpu-hour",
                    1.0,
                    baseline_nanos=1_000_000,
                    busy_s=busy,
                ),
            )
        # an API call is busy too (tierline measures every backend) but is no GPU time
        api = CallRecord("d2", 3, "api", "m", "ok", Usage(10, 5), 0, "genai-prices:m", 1.0)
        ledger.record_call(run, dataclasses.replace(api, baseline_nanos=0, busy_s=7200.0))
        ledger.flush()
        ledger.conn.execute(
            "UPDATE calls SET created_at = '2026-11-0' || substr(job_id, 2) || 'T12:00:00+00:00'"
        )
    args = ["ledger", "summary", "--by", "day", "--ledger", str(db)]
    window = ["--since", "2026-11-02", "--until", "2026-11-03"]
    assert main([*args, *window, "--json"]) == 0
    rows = json.loads(capsysbinary.readouterr().out)
    assert [(r["group"]["day"], r["cost_nanos"], r["savings_nanos"]) for r in rows] == [
        ("2026-11-02", 200_000, 800_000),
        ("2026-11-03", 100_000, 1_900_000),
    ]
    assert [r["gpu_hours"] for r in rows] == [0.5, 0.25]
    assert main([*args, *window]) == 0
    table = capsysbinary.readouterr().out.decode()  # not a terminal: TSV
    [last] = [line.split("\t") for line in table.splitlines() if line.startswith("all\t")]
    assert "$0.000300" in last and "$0.002700 (90%)" in last and "0.750" in last


def test_tables_are_tsv_in_a_pipe_and_rich_on_a_terminal(tmp_path: Path) -> None:
    """`ledger summary` and `ledger runs` in a pipe: one TSV line per row under a header, no
    box and no wrapping; on a terminal the same rows as a rich table."""
    run = fill(tmp_path / "l.db")
    argv = [sys.executable, "-m", "tierline", "ledger"]
    db = ["--ledger", str(tmp_path / "l.db")]
    out = subprocess.run(
        [*argv, "summary", "--by", "tier,backend", *db],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "40"},  # a narrow terminal width must not matter
    ).stdout
    rows = list(csv.reader(io.StringIO(out), delimiter="\t"))
    assert rows[0][:7] == ["tier", "backend", "calls", "jobs", "tokens in", "tokens out", "cost"]
    by = {(r[0], r[1]): r for r in rows[1:]}
    assert by[("3", "claude")][6] == "$0.000700" and by[("1", "local")][2] == "2"
    assert by[("all", "all")][6] == "$0.000700" and len(rows) == 5
    assert all(len(r) == len(rows[0]) for r in rows) and "│" not in out
    runs = subprocess.run([*argv, "runs", *db], capture_output=True, text=True, check=True)
    head, line = runs.stdout.splitlines()
    assert head.split("\t")[:4] == ["run", "started", "status", "jobs"]
    assert line.split("\t")[0] == run and line.split("\t")[2:4] == ["ok", "4"]

    from rich.console import Console
    from rich.table import Table

    from tierline.cli.output import print_table

    table = Table("backend", "cost")
    table.add_row("claude", "$0.000700")
    terminal = Console(file=io.StringIO(), force_terminal=True, width=60)
    print_table(table, terminal)
    shown = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "claude" in shown and "┃" in shown and "\t" not in shown
    pipe = Console(file=io.StringIO(), force_terminal=False)
    print_table(table, pipe)
    assert pipe.file.getvalue() == "backend\tcost\nclaude\t$0.000700\n"  # type: ignore[attr-defined]
