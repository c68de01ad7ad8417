"""Reading the ledger: totals and savings grouped any way, the list of runs, and exports.

Savings compare like with like: the baseline is summed over the calls whose own price is known,
so a call of unknown price inflates neither side. Unknown-price calls are counted separately.
"""

from __future__ import annotations

import csv
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import IO, Any

from ..errors import UsageError
from ..jobs import dumps
from .pricing import nanos_to_usd

__all__ = [
    "GROUPS",
    "Filters",
    "ReportData",
    "SummaryRow",
    "export_calls",
    "list_runs",
    "parse_since",
    "parse_until",
    "report_data",
    "reused_answers",
    "summarize",
    "total",
]

# --by names and the SQL that groups by each (fixed strings: never user text in SQL).
GROUPS = {
    "tier": "tier",
    "backend": "backend",
    "model": "model",
    "day": "substr(created_at, 1, 10)",
    "run": "run_id",
}
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, *, now: datetime | None = None) -> str:
    """`--since`: a duration back from now (30m, 24h, 7d, 2w) or an ISO date or time (UTC)."""
    now = now or datetime.now(timezone.utc)
    match = _DURATION.match(text.strip())
    if match:
        moment = now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(
                f"--since {text!r}: give a duration (30m, 24h, 7d, 2w) or a date (2026-11-01)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def parse_until(text: str, *, now: datetime | None = None) -> str:
    """`--until`: like --since, the end of a window (exclusive); a bare date includes that day
    (`--since 2026-11-01 --until 2026-11-30` is all of November)."""
    moment = parse_since(text, now=now)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        moment = (datetime.fromisoformat(moment) + timedelta(days=1)).isoformat()
    return moment


@dataclass(frozen=True, slots=True)
class Filters:
    run_id: str | None = None
    since: str | None = None  # an ISO timestamp, from parse_since
    until: str | None = None  # ... from parse_until (exclusive)

    def where(self, time_column: str = "created_at") -> tuple[str, list[Any]]:
        clauses, params = [], []
        if self.run_id is not None:
            clauses.append("run_id = ?" if time_column == "created_at" else "id = ?")
            params.append(self.run_id)
        if self.since is not None:
            clauses.append(f"{time_column} >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{time_column} < ?")
            params.append(self.until)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


@dataclass(frozen=True, slots=True)
class SummaryRow:
    group: dict[str, Any]
    calls: int
    jobs: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_nanos: int  # over the calls with a known price, in nano-dollars
    unpriced_calls: int  # calls whose price is unknown: NOT in cost_nanos
    baseline_nanos: int  # the same calls on the baseline model
    batch_calls: int
    answered_calls: int  # calls that returned an answer
    failed_checks: int  # answers that failed an answer check (escalated, or final errors)
    busy_s: float = 0.0  # measured busy time of calls priced by gpu_hour_usd (GPU-hours)

    @property
    def check_failure_rate(self) -> float | None:
        """The escalation signal: a high rate on a tier or backend means retune tiering."""
        return self.failed_checks / self.answered_calls if self.answered_calls else None

    @property
    def savings_nanos(self) -> int:
        return self.baseline_nanos - self.cost_nanos

    @property
    def savings_share(self) -> float | None:
        return self.savings_nanos / self.baseline_nanos if self.baseline_nanos else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            cost_usd=self.cost_nanos / 1e9,
            baseline_usd=self.baseline_nanos / 1e9,
            savings_nanos=self.savings_nanos,
            savings_usd=self.savings_nanos / 1e9,
            savings_share=self.savings_share,
            check_failure_rate=self.check_failure_rate,
            gpu_hours=self.busy_s / 3600,
        )
        return out


def summarize(conn: sqlite3.Connection, by: Sequence[str], filters: Filters) -> list[SummaryRow]:
    """Totals per group (one row with an empty group when `by` is empty), largest cost first."""
    unknown = [name for name in by if name not in GROUPS]
    if unknown:
        raise UsageError(f"--by {unknown[0]!r}: choose from {', '.join(GROUPS)}")
    keys = [GROUPS[name] for name in by]
    where, params = filters.where()
    select = "".join(f"{key}, " for key in keys)
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    # days in date order (a spend history); anything else largest cost first
    order = "1" if by and by[0] == "day" else f"{len(keys) + 8} DESC"
    sql = f"""SELECT {select}COUNT(*), COUNT(DISTINCT run_id || ':' || COALESCE(job_id, '')),
        COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
        COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(cache_write_tokens), 0),
        COALESCE(SUM(reasoning_tokens), 0), COALESCE(SUM(cost_nanos), 0),
        COALESCE(SUM(cost_nanos IS NULL), 0),
        COALESCE(SUM(CASE WHEN cost_nanos IS NOT NULL THEN baseline_nanos END), 0),
        COALESCE(SUM(batch), 0), COALESCE(SUM(status = 'ok'), 0),
        COALESCE(SUM(check_failed IS NOT NULL), 0), COALESCE(SUM(CASE WHEN price_source LIKE 'gpu-hour%' THEN busy_s END), 0.0)
        FROM calls{where}{group} ORDER BY {order}"""
    rows = []
    for row in conn.execute(sql, params):
        values = list(row)
        group_values, numbers = values[: len(keys)], values[len(keys) :]
        if not keys and numbers[0] == 0:
            continue  # no calls at all: no row rather than a row of zeros
        rows.append(SummaryRow(dict(zip(by, group_values, strict=True)), *numbers))
    return rows


def total(rows: Sequence[SummaryRow]) -> SummaryRow:
    """The sum of summary rows (for the table's last line)."""
    numbers = [
        sum(getattr(row, f.name) for row in rows) for f in fields(SummaryRow) if f.name != "group"
    ]
    return SummaryRow({}, *numbers)


RUN_COLUMNS = (
    "id",
    "started_at",
    "finished_at",
    "status",
    "command",
    "jobs",
    "ok",
    "failed",
    "skipped_budget",
    "deduped",
    "cached",
    "cost_nanos",
    "unpriced_calls",
    "baseline_nanos",
    "baseline_model",
    "max_cost_micros",
    "config_origin",
    "price_version",
)


def list_runs(
    conn: sqlite3.Connection, filters: Filters, limit: int | None = None
) -> list[dict[str, Any]]:
    """Runs, newest first."""
    where, params = filters.where("started_at")
    sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs{where} ORDER BY started_at DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [dict(zip(RUN_COLUMNS, row, strict=True)) for row in conn.execute(sql, params)]


def reused_answers(conn: sqlite3.Connection, filters: Filters) -> tuple[int, int]:
    """(deduped, cached): jobs of the runs in `filters` answered without a call, at no cost."""
    where, params = filters.where("started_at")
    row = conn.execute(
        f"SELECT COALESCE(SUM(deduped), 0), COALESCE(SUM(cached), 0) FROM runs{where}", params
    ).fetchone()
    return int(row[0]), int(row[1])


def _calls(conn: sqlite3.Connection, filters: Filters) -> tuple[list[str], Iterator[Any]]:
    where, params = filters.where()
    cursor = conn.execute(f"SELECT * FROM calls{where} ORDER BY id", params)
    return [d[0] for d in cursor.description], iter(cursor)


def export_calls(conn: sqlite3.Connection, filters: Filters, fmt: str, stream: IO[bytes]) -> int:
    """Write every call row (all ledger columns, plus cost in USD) as CSV or JSONL; the count."""
    columns, rows = _calls(conn, filters)
    columns = [*columns, "cost_usd", "baseline_usd"]
    cost_at, baseline_at = columns.index("cost_nanos"), columns.index("baseline_nanos")
    count = 0
    if fmt == "jsonl":
        for row in rows:
            values = [*row, nanos_to_usd(row[cost_at]), nanos_to_usd(row[baseline_at])]
            stream.write(dumps(dict(zip(columns, values, strict=True))) + b"\n")
            count += 1
        return count
    if fmt != "csv":
        raise UsageError(f"--format {fmt!r}: choose csv or jsonl")
    text = _TextOut(stream)
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([*row, _usd(row[cost_at]), _usd(row[baseline_at])])
        count += 1
    return count


def _usd(nanos: int | None) -> str | None:
    # Exact decimal text: a float would print 1.1925e-05 for 11,925 nano-dollars.
    if nanos is None:
        return None
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), 1_000_000_000)
    return f"{sign}{whole}.{frac:09d}"


class _TextOut:
    """A minimal text adaptor for csv.writer onto a binary stream (stdout or a file)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(text.encode())


@dataclass(frozen=True, slots=True)
class LatencyRow:
    backend: str
    calls: int
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float


@dataclass(frozen=True, slots=True)
class CostlyJob:
    run_id: str
    job_id: str
    calls: int
    cost_nanos: int
    backends: str  # the backends its calls went to, comma-separated


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything `tierline ledger report` draws: figures only, no rendering."""

    total: SummaryRow | None  # None: no calls in the window
    by_day_tier: list[SummaryRow]  # group {"day", "tier"}, days in order
    by_day_backend: list[SummaryRow]
    by_tier: list[SummaryRow]
    by_backend: list[SummaryRow]
    escalated_jobs: dict[int | None, int]  # tier -> jobs with an answer that failed a check
    jobs_by_tier: dict[int | None, int]
    latency: list[LatencyRow]
    top_jobs: list[CostlyJob]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list: always an observed value."""
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100), at least 1
    return sorted_values[int(rank) - 1]


def latency_by_backend(conn: sqlite3.Connection, filters: Filters) -> list[LatencyRow]:
    where, params = filters.where()
    values: dict[str, list[float]] = {}
    sql = f"SELECT backend, latency_s FROM calls{where} ORDER BY backend, latency_s"
    for backend, latency in conn.execute(sql, params):
        values.setdefault(backend, []).append(latency)
    return [
        LatencyRow(b, len(v), percentile(v, 50), percentile(v, 90), percentile(v, 99), v[-1])
        for b, v in values.items()
    ]


def top_cost_jobs(conn: sqlite3.Connection, filters: Filters, limit: int = 10) -> list[CostlyJob]:
    """The jobs that cost most (all their calls: retries, fallbacks, escalations)."""
    where, params = filters.where()
    sql = f"""SELECT run_id, COALESCE(job_id, ''), COUNT(*), SUM(cost_nanos),
        GROUP_CONCAT(DISTINCT backend) FROM calls{where}
        GROUP BY run_id, job_id HAVING SUM(cost_nanos) > 0
        ORDER BY 4 DESC, 1, 2 LIMIT ?"""
    return [CostlyJob(*row) for row in conn.execute(sql, [*params, limit])]


def _jobs_per_tier(conn: sqlite3.Connection, filters: Filters, only_failed: bool) -> dict[Any, int]:
    where, params = filters.where()
    if only_failed:
        where += (" AND" if where else " WHERE") + " check_failed IS NOT NULL"
    sql = f"""SELECT tier, COUNT(DISTINCT run_id || ':' || COALESCE(job_id, ''))
        FROM calls{where} GROUP BY tier ORDER BY tier"""
    return dict(conn.execute(sql, params).fetchall())


def report_data(conn: sqlite3.Connection, filters: Filters) -> ReportData:
    """The figures of the HTML report, from the same queries as `ledger summary`."""
    whole = summarize(conn, [], filters)
    return ReportData(
        total=whole[0] if whole else None,
        by_day_tier=summarize(conn, ["day", "tier"], filters),
        by_day_backend=summarize(conn, ["day", "backend"], filters),
        by_tier=sorted(summarize(conn, ["tier"], filters), key=lambda r: str(r.group["tier"])),
        by_backend=summarize(conn, ["backend"], filters),
        escalated_jobs=_jobs_per_tier(conn, filters, only_failed=True),
        jobs_by_tier=_jobs_per_tier(conn, filters, only_failed=False),
        latency=latency_by_backend(conn, filters),
        top_jobs=top_cost_jobs(conn, filters),
    )
