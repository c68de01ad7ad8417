"""`tierline ledger report`: an offline HTML page whose charts carry the ledger's figures,
rendered the way a person opens it (headless Chromium, the Debian package .ci/run installs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tierline.cli import main
from tierline.jobs import Usage
from tierline.ledger.reports import Filters, percentile, report_data
from tierline.ledger.store import CallRecord, Ledger

# (day, job, tier, backend, cost nano-$, baseline nano-$, latency s, failed check)
ROWS = [
    ("2026-11-01", "a", 1, "local", 100_000, 900_000, 0.2, None),
    ("2026-11-01", "b", 3, "claude", 2_500_000, 3_000_000, 1.5, None),
    ("2026-11-02", "c", 1, "local", 200_000, 1_000_000, 0.4, "json"),
    ("2026-11-02", "c", 2, "gpt", 700_000, 1_000_000, 0.9, None),  # c escalated to tier 2
    ("2026-11-03", "d", 2, "gpt", 1_300_000, 2_000_000, 1.1, None),
]
# spend per day: the sums the charts must print
DAY_TOTALS = {"2026-11-01": "$0.002600", "2026-11-02": "$0.000900", "2026-11-03": "$0.001300"}


def build(db: Path) -> None:
    with Ledger(db) as ledger:
        run = ledger.start_run(command="run", config_origin="t", inputs=["a"], baseline_model="b")
        for _day, job, tier, backend, cost, baseline, latency, failed in ROWS:
            ledger.record_call(
                run,
                CallRecord(
                    job,
                    tier,
                    backend,
                    backend + "-m",
                    "ok",
                    Usage(10, 5),
                    cost,
                    "x",
                    latency,
                    baseline_nanos=baseline,
                    check_failed=failed,
                ),
            )
        ledger.flush()
        for i, (day, *_rest) in enumerate(ROWS, start=1):
            ledger.conn.execute(
                "UPDATE calls SET created_at = ? WHERE id = ?", (f"{day}T12:00:00+00:00", i)
            )
        ledger.finish_run(run, jobs=4, ok=4, failed=0, status="ok")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [5.0, 9.0, 10.0, 10.0]
    assert percentile([0.3], 50) == 0.3


def test_report_data_matches_the_rows(tmp_path: Path) -> None:
    build(tmp_path / "l.db")
    with Ledger(tmp_path / "l.db") as ledger:
        data = report_data(ledger.conn, Filters())
    assert data.total is not None and data.total.cost_nanos == 4_800_000
    assert data.jobs_by_tier == {1: 2, 2: 2, 3: 1} and data.escalated_jobs == {1: 1}
    assert [(j.job_id, j.cost_nanos, j.calls) for j in data.top_jobs] == [
        ("b", 2_500_000, 1),
        ("d", 1_300_000, 1),
        ("c", 900_000, 2),  # both its calls: the failed tier-1 answer and the tier-2 one
        ("a", 100_000, 1),
    ]
    latency = {r.backend: (r.calls, r.p50_s, r.max_s) for r in data.latency}
    assert latency == {"claude": (1, 1.5, 1.5), "gpt": (2, 0.9, 1.1), "local": (2, 0.2, 0.4)}


def _render(tmp_path: Path) -> str:
    build(tmp_path / "l.db")
    page = tmp_path / "report.html"
    assert main(["ledger", "report", "-o", str(page), "--ledger", str(tmp_path / "l.db")]) == 0
    return page.read_text()


def test_report_charts_carry_the_ledger_figures(tmp_path: Path) -> None:
    html = _render(tmp_path)
    totals = re.findall(r'<text class="total"[^>]*>([^<]+)</text>', html)
    # twice each (by tier, by backend), then the baseline bars of the savings chart
    assert totals[:6] == [*DAY_TOTALS.values()] * 2
    assert "2026-11-01 · tier 3: $0.002500</title>" in html
    assert "2026-11-02 · gpt: $0.000700</title>" in html
    assert "Paid <b>$0.004800</b>" in html and "saved <b>$0.003100 (39%)</b>" in html
    assert "local: 1/2 (50.0%)" in html  # the failed check
    assert "tier 1: 1/2 (50.0%)" in html  # job c escalated from tier 1
    # self-contained: no script, no external resource
    assert "<script" not in html and not re.search(r'(src|href)="', html)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)


def test_empty_window_says_so(tmp_path: Path) -> None:
    build(tmp_path / "l.db")
    page = tmp_path / "r.html"
    args = ["ledger", "report", "-o", str(page), "--since", "2030-01-01"]
    assert main([*args, "--ledger", str(tmp_path / "l.db")]) == 0
    assert "No calls in this window" in page.read_text()


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """Open it like a person: no console errors, the SVG figures in the DOM, a screenshot."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (.ci/run installs Debian's chromium)"
    _render(tmp_path)
    page = (tmp_path / "report.html").as_uri()
    flags = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
    ]  # fmt: skip
    dom = subprocess.run(
        [*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120, check=True
    )
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    assert dom.stdout.count("<svg") == 7
    for total in DAY_TOTALS.values():
        assert total in dom.stdout
    # the check above can fail: the bad SVG a chart bug would write is a console error
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><svg><rect width="10" height="-5"/></svg>')
    dom = subprocess.run([*flags, "--dump-dom", bad.as_uri()], capture_output=True, text=True)
    assert any("CONSOLE" in line for line in dom.stderr.splitlines()), dom.stderr
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=900,2400", page],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if keep := os.environ.get("TIERLINE_KEEP_SCREENSHOT"):  # to look at it
        shutil.copy(shot, keep)
