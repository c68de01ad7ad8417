"""`tierline ledger report`: the ledger's figures as one self-contained HTML page.

The charts are inline SVG written here, not a plotting library: the file must open offline
(no CDN, no script to fetch), stay small enough to mail, and be testable by reading the text
of the SVG; a JS charting library would add hundreds of kB inline and a browser dependency to
see any number, and matplotlib would add a heavy import for a few bar charts. Every bar carries
a <title> with its exact figure (the hover text) and totals are printed as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from html import escape

from .reports import ReportData, SummaryRow

__all__ = ["render_report"]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000")
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 760, 260, 90, 40, 24


def usd(nanos: int) -> str:
    """The same figure `ledger summary` prints (six decimals: cheap calls cost micro-dollars)."""
    return f"${nanos / 1e9:,.6f}"


def _label(value: object) -> str:
    return "no tier" if value is None else str(value)


def _stacked(days: list[str], series: dict[str, dict[str, int]], caption: str) -> str:
    """Vertical bars per day, stacked by series; the day's total printed above each bar."""
    totals = [sum(s.get(d, 0) for s in series.values()) for d in days]
    top = max(totals, default=0) or 1
    slot = (WIDTH - LEFT - 10) / max(len(days), 1)
    bar = min(48.0, slot * 0.7)
    plot_h = HEIGHT - BOTTOM - TOP
    parts = [_axis(top, plot_h)]
    for i, day in enumerate(days):
        x = LEFT + i * slot + (slot - bar) / 2
        y = float(HEIGHT - BOTTOM)
        for (name, values), colour in zip(series.items(), PALETTE * 4, strict=False):
            value = values.get(day, 0)
            if value <= 0:
                continue
            h = value / top * plot_h
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{escape(day)} · {escape(name)}: {usd(value)}</title></rect>'
            )
        parts.append(
            f'<text class="total" x="{x + bar / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">'
            f"{usd(totals[i])}</text>"
        )
        if len(days) <= 16 or i % max(1, len(days) // 12) == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle">{escape(day)}</text>'
            )
    return _figure(caption, "".join(parts), _legend(list(series)))


def _axis(top: int, plot_h: int) -> str:
    lines = []
    for step in range(5):
        value = top * step / 4
        y = HEIGHT - BOTTOM - step / 4 * plot_h
        lines.append(
            f'<line x1="{LEFT}" x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{usd(round(value))}</text>'
        )
    return "".join(lines)


def _hbars(
    rows: Sequence[tuple[str, float, str]],
    caption: str,
    top: float | None = None,
    cycle: int = len(PALETTE),
) -> str:
    """Horizontal bars: (label, value, the text printed after the bar); colours repeat every
    `cycle` rows (3 for the p50/p90/p99 of each backend)."""
    top = top or max((v for _, v, _ in rows), default=0) or 1
    row_h, label_w = 26, 150
    height = row_h * len(rows) + 10
    parts = []
    for i, (label, value, text) in enumerate(rows):
        y = 5 + i * row_h
        w = value / top * (WIDTH - label_w - 170)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{PALETTE[i % cycle]}"><title>{escape(label)}: {escape(text)}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 16}">{escape(text)}</text>'
        )
    return _figure(caption, "".join(parts), "", height)


def _figure(caption: str, body: str, legend: str, height: int = HEIGHT) -> str:
    return (
        f"<figure><figcaption>{escape(caption)}</figcaption>{legend}"
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" aria-label="{escape(caption)}">'
        f"{body}</svg></figure>"
    )


def _legend(names: list[str]) -> str:
    items = "".join(
        f'<span><i style="background:{colour}"></i>{escape(name)}</span>'
        for name, colour in zip(names, PALETTE * 4, strict=False)
    )
    return f'<div class="legend">{items}</div>'


def _by_day(rows: list[SummaryRow], key: str, prefix: str = "") -> dict[str, dict[str, int]]:
    series: dict[str, dict[str, int]] = {}
    for row in rows:
        name = prefix + _label(row.group[key])
        series.setdefault(name, {})[row.group["day"]] = row.cost_nanos
    return dict(sorted(series.items()))


def _savings(data: ReportData, days: list[str]) -> str:
    cost = dict.fromkeys(days, 0)
    baseline = dict.fromkeys(days, 0)
    for row in data.by_day_tier:
        cost[row.group["day"]] += row.cost_nanos
        baseline[row.group["day"]] += row.baseline_nanos
    rows = []
    for day in days:
        saved = baseline[day] - cost[day]
        share = f" ({saved / baseline[day]:.0%})" if baseline[day] else ""
        rows.append(
            f"<tr><td>{escape(day)}</td><td>{usd(cost[day])}</td><td>{usd(baseline[day])}</td>"
            f"<td>{usd(saved)}{share}</td></tr>"
        )
    chart = _stacked(
        days,
        {"paid": cost, "saved against the baseline": {d: baseline[d] - cost[d] for d in days}},
        "Paid and saved per day (the bar's height is the baseline: all on the baseline model)",
    )
    return chart + _table(("day", "paid", "baseline", "saved"), rows)


def _rates(data: ReportData) -> str:
    failing = [
        (b.group["backend"], b.check_failure_rate or 0.0, _rate(b.failed_checks, b.answered_calls))
        for b in data.by_backend
    ]
    escalated = [
        (
            f"tier {_label(tier)}",
            data.escalated_jobs.get(tier, 0) / jobs if jobs else 0.0,
            _rate(data.escalated_jobs.get(tier, 0), jobs),
        )
        for tier, jobs in data.jobs_by_tier.items()
    ]
    return _hbars(failing, "Answers failing a check, per backend", 1.0) + _hbars(
        escalated, "Jobs escalated (an answer failed a check), per tier", 1.0
    )


def _rate(part: int, whole: int) -> str:
    return f"{part:,}/{whole:,} ({part / whole:.1%})" if whole else "no answers"


def _latency(data: ReportData) -> str:
    top = max((r.p99_s for r in data.latency), default=0.0) or 1.0
    bars: list[tuple[str, float, str]] = []
    for r in data.latency:
        for name, value in (("p50", r.p50_s), ("p90", r.p90_s), ("p99", r.p99_s)):
            bars.append((f"{r.backend} {name}", value, f"{value:.3f} s"))
    rows = [
        f"<tr><td>{escape(r.backend)}</td><td>{r.calls:,}</td><td>{r.p50_s:.3f}</td>"
        f"<td>{r.p90_s:.3f}</td><td>{r.p99_s:.3f}</td><td>{r.max_s:.3f}</td></tr>"
        for r in data.latency
    ]
    caption = "Latency per backend (seconds per call, retries included)"
    return _hbars(bars, caption, top, cycle=3) + _table(
        ("backend", "calls", "p50 s", "p90 s", "p99 s", "max s"), rows
    )


def _table(head: Sequence[str], rows: list[str]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _top_jobs(data: ReportData) -> str:
    rows = [
        f"<tr><td>{escape(j.run_id)}</td><td>{escape(j.job_id)}</td><td>{j.calls}</td>"
        f"<td>{usd(j.cost_nanos)}</td><td>{escape(j.backends)}</td></tr>"
        for j in data.top_jobs
    ]
    return "<h2>Top-cost jobs</h2>" + _table(("run", "job", "calls", "cost", "backends"), rows)


def _headline(total: SummaryRow) -> str:
    share = f" ({total.savings_share:.0%})" if total.savings_share is not None else ""
    unpriced = (
        f'<p class="warn">{total.unpriced_calls:,} call(s) have NO KNOWN PRICE and are in none '
        "of these sums (<code>tierline ledger export</code> lists them).</p>"
        if total.unpriced_calls
        else ""
    )
    return (
        f'<p class="headline">Paid <b>{usd(total.cost_nanos)}</b> for {total.calls:,} calls '
        f"({total.jobs:,} jobs); on the baseline model: <b>{usd(total.baseline_nanos)}</b>; "
        f"saved <b>{usd(total.savings_nanos)}{share}</b>.</p>{unpriced}"
    )


STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:800px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}figure{margin:16px 0}
figcaption{font-weight:600;margin-bottom:4px}svg text{font-size:11px;fill:#333}
svg text.total{font-weight:600}.grid{stroke:#ddd}.legend span{margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:2px 10px;text-align:right;
border-bottom:1px solid #eee}td:first-child,th:first-child{text-align:left}
.warn{color:#b00}.headline{font-size:15px}"""


def render_report(data: ReportData, *, window: str, now: datetime | None = None) -> str:
    """The whole page as a string (no script, no external resource)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>tierline cost report</title><style>{STYLE}</style></head><body>"
        f"<h1>tierline cost report</h1><p>{escape(window)} · made {stamp}</p>"
    )
    if data.total is None:
        return head + "<p>No calls in this window.</p></body></html>"
    days = sorted({row.group["day"] for row in data.by_day_tier})
    mix = [
        (f"tier {_label(r.group['tier'])}", float(r.jobs), _share(r.jobs, data.total.jobs))
        for r in data.by_tier
    ]
    return "".join(
        [
            head,
            _headline(data.total),
            "<h2>Spend per day</h2>",
            _stacked(days, _by_day(data.by_day_tier, "tier", "tier "), "By tier"),
            _stacked(days, _by_day(data.by_day_backend, "backend"), "By backend"),
            "<h2>Savings against the baseline model</h2>",
            _savings(data, days),
            "<h2>Tier mix</h2>",
            _hbars(mix, "Jobs per tier (an escalated job counts on each tier it ran on)"),
            "<h2>Checks and escalation</h2>",
            _rates(data),
            "<h2>Latency</h2>",
            _latency(data),
            _top_jobs(data),
            "</body></html>\n",
        ]
    )


def _share(part: int, whole: int) -> str:
    jobs = f"{part:,} job" + ("" if part == 1 else "s")
    return f"{jobs} ({part / whole:.0%})" if whole else jobs
