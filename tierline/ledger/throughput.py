"""How fast a backend turns tokens into busy time: what `plan` needs to price a `gpu_hour_usd`
backend before anything is sent, and to say when a run would finish (tierline measures the busy
time of every backend, API or self-hosted; only gpu_hour_usd turns it into money).

A call's busy time (`tierline.ledger.busy`: its share of the time the backend had requests in
flight) is modelled as a fixed part per call (queueing in the server, prefill, network) plus a
part per output token (decoding, which dominates on GPUs):

    busy_s = per_call_s + per_token_s * output_tokens

fitted by least squares over the backend's newest calls in the ledger (or a calibration run,
which is recorded there too). With a `throughput` hint in the config instead (output tokens per
busy second, all concurrent requests together), per_call_s is 0 and per_token_s its inverse.

The fit also gives its own uncertainty: the standard error of a predicted total (parameter
error plus the calls' scatter), so a plan learned from 12 calls says so. It does not cover the
error of the *token* estimate itself (docs/costs.md), nor a change of concurrency: busy shares
measured at 8 requests in flight are cheaper per call than at 1.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MIN_CALLS", "RECENT_CALLS", "Throughput", "from_hint", "learn", "open_readonly"]

MIN_CALLS = 5  # fewer measured calls than this: no fit (the uncertainty would be meaningless)
RECENT_CALLS = 2000  # learn from the newest calls only: servers, models and settings change
OUTLIER_MADS = 8.0  # a call this many robust deviations off the fitted line is left out
HUBER_K = 1.345  # the usual Huber constant: calls beyond k deviations count less in the fit


@dataclass(frozen=True, slots=True)
class Throughput:
    """Busy seconds per call and per output token on one backend and model, and the evidence."""

    basis: str  # "ledger", "config"
    per_call_s: float
    per_token_s: float
    calls: int = 0  # measured calls behind the figure (0 for a hint)
    tokens: int = 0  # output tokens of those calls
    busy_s: float = 0.0  # their busy seconds
    newest: str | None = None  # created_at of the newest and oldest call used
    oldest: str | None = None
    model: str | None = None  # the model the calls were answered by
    outliers: int = 0  # measured calls left out of the fit as far off the line
    # for the uncertainty of a prediction: residual variance and (X'X)^-1 of the fit
    _sigma2: float = 0.0
    _inv: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (a, b, d) of [[a, b], [b, d]]

    @property
    def tokens_per_busy_s(self) -> float | None:
        """The headline figure: output tokens per busy second (None: no tokens measured)."""
        if self.basis == "config":
            return 1 / self.per_token_s
        return self.tokens / self.busy_s if self.busy_s > 0 and self.tokens else None

    def busy_seconds(self, calls: float, output_tokens: float) -> float:
        """Predicted busy seconds of `calls` calls producing `output_tokens` in all."""
        return calls * self.per_call_s + output_tokens * self.per_token_s

    def relative_error(self, calls: float, output_tokens: float) -> float | None:
        """Standard error of `busy_seconds(calls, output_tokens)` as a share of it; None when not
        measured (a config hint has no known error)."""
        if self.basis == "config" or calls <= 0:
            return None
        predicted = self.busy_seconds(calls, output_tokens)
        if predicted <= 0:
            return None
        a, b, d = self._inv
        parameters = self._sigma2 * (
            calls * calls * a + 2 * calls * output_tokens * b + output_tokens**2 * d
        )
        scatter = self._sigma2 * calls  # each future call scatters like the measured ones
        return math.sqrt(max(parameters, 0.0) + scatter) / predicted

    def describe(self) -> str:
        """One phrase for the plan: the basis, the evidence and the figure."""
        rate = self.tokens_per_busy_s
        if self.basis == "config":
            return f"config throughput hint {rate:,.0f} output tok/busy-s (not measured)"
        when = (self.newest or "")[:16].replace("T", " ")
        answered = f" answered as {self.model!r}" if self.model else ""
        figure = f"{rate:,.0f} output tok/busy-s" if rate else "no output tokens"
        # the answers' length there, to set against the plan's estimate (the weak part)
        figure += f"; {self.tokens / self.calls:,.0f} output tokens/call" if self.calls else ""
        left_out = f" ({self.outliers} more left out as outliers)" if self.outliers else ""
        return (
            f"ledger: {self.calls:,} call(s){answered}{left_out}, newest {when} UTC: "
            f"{self.per_call_s:.3g} busy-s/call + {self.per_token_s:.3g} busy-s/token ({figure})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "basis": self.basis,
            "per_call_s": self.per_call_s,
            "per_token_s": self.per_token_s,
            "output_tokens_per_busy_s": self.tokens_per_busy_s,
            "calls": self.calls,
            "output_tokens": self.tokens,
            "busy_s": self.busy_s,
            "newest": self.newest,
            "oldest": self.oldest,
            "model": self.model,
            "outliers": self.outliers,
        }


def from_hint(tokens_per_s: float) -> Throughput:
    """A `throughput` hint from the config: output tokens per busy second."""
    return Throughput("config", 0.0, 1 / tokens_per_s)


def open_readonly(path: Path) -> sqlite3.Connection | None:
    """The ledger for reading only (None when there is none): `plan` must not create one."""
    if not path.is_file():
        return None
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)


def _calls(conn: sqlite3.Connection, backend: str, model: str) -> tuple[str | None, list[Any]]:
    """The newest measured calls on `backend`, preferring those answered by `model`."""
    sql = """SELECT busy_s, output_tokens, created_at FROM calls
        WHERE backend = ? AND model = ? AND busy_s IS NOT NULL AND batch = 0
        ORDER BY id DESC LIMIT ?"""
    rows = conn.execute(sql, (backend, model, RECENT_CALLS)).fetchall()
    if rows:
        return None, rows
    # A server may report another name for the model (llama-server: the file name): use the
    # model that answered most of this backend's calls, and say which.
    found = conn.execute(
        """SELECT model FROM calls WHERE backend = ? AND busy_s IS NOT NULL AND batch = 0
           GROUP BY model ORDER BY COUNT(*) DESC LIMIT 1""",
        (backend,),
    ).fetchone()
    if found is None:
        return None, []
    return found[0], conn.execute(sql, (backend, found[0], RECENT_CALLS)).fetchall()


def learn(conn: sqlite3.Connection, backend: str, model: str) -> Throughput | str:
    """The fitted throughput of `backend` from the ledger, or why there is none."""
    try:
        answered, rows = _calls(conn, backend, model)
    except sqlite3.Error as exc:  # an older ledger without busy times, or a locked file
        return f"the ledger cannot be read ({exc})"
    if len(rows) < MIN_CALLS:
        return (
            f"the ledger has {len(rows)} measured call(s) on {backend!r} (at least {MIN_CALLS} "
            "are needed)"
        )
    busy = [float(r[0]) for r in rows]
    out = [float(r[1] or 0) for r in rows]
    # Calls far off the line (a blocking SDK import or a stall at a run's start charges the
    # calls then in flight; a server hiccup) would skew a fit meant for a day of calls: find
    # the line robustly, leave out calls beyond OUTLIER_MADS robust deviations from it, say how
    # many, and fit the rest by least squares (whose standard errors are then meaningful).
    keep = _inliers(busy, out)
    if len(keep) < MIN_CALLS:
        keep = list(range(len(rows)))
    fit = _fit(
        [busy[i] for i in keep],
        [out[i] for i in keep],
        newest=rows[0][2],
        oldest=rows[-1][2],
        model=answered,
    )
    return dataclasses.replace(fit, outliers=len(rows) - len(keep))


def _inliers(busy: list[float], out: list[float], rounds: int = 20) -> list[int]:
    """Indices of the calls within OUTLIER_MADS robust deviations of a Huber-weighted line."""
    # a floor on the scale: when most calls sit exactly on a line, rounding is not an outlier
    floor = 1e-6 * sum(busy) / len(busy)
    weights = [1.0] * len(busy)
    residuals: list[float] = []
    scale = floor
    for _ in range(rounds):
        a, b = _weighted_line(busy, out, weights)
        residuals = [y - a - b * x for x, y in zip(out, busy, strict=True)]
        scale = max(floor, 1.4826 * statistics.median(abs(r) for r in residuals))
        weights = [min(1.0, HUBER_K * scale / abs(r)) if r else 1.0 for r in residuals]
    return [i for i, r in enumerate(residuals) if abs(r) <= OUTLIER_MADS * scale]


def _weighted_line(busy: list[float], out: list[float], w: list[float]) -> tuple[float, float]:
    sw = sum(w)
    sx = sum(wi * x for wi, x in zip(w, out, strict=True))
    sy = sum(wi * y for wi, y in zip(w, busy, strict=True))
    sxx = sum(wi * x * x for wi, x in zip(w, out, strict=True))
    sxy = sum(wi * x * y for wi, x, y in zip(w, out, busy, strict=True))
    det = sw * sxx - sx * sx
    if det <= 1e-12 * max(sw * sxx, 1.0):
        return sy / sw, 0.0
    b = (sw * sxy - sx * sy) / det
    return (sy - b * sx) / sw, b


def _fit(
    busy: list[float], out: list[float], *, newest: str, oldest: str, model: str | None
) -> Throughput:
    """Least squares busy = a + b*out, both non-negative; with its (X'X)^-1 and residual var."""
    n = len(busy)
    sx, sy = sum(out), sum(busy)
    sxx = sum(x * x for x in out)
    sxy = sum(x * y for x, y in zip(out, busy, strict=True))
    det = n * sxx - sx * sx
    per_token = (n * sxy - sx * sy) / det if det > 0 else 0.0
    per_call = (sy - per_token * sx) / n
    if det <= 0 or per_token < 0:  # lengths tell nothing (all equal) or noise: per call only
        per_token, per_call = 0.0, sy / n
        inv = (1 / n, 0.0, 0.0)
        params = 1
    elif per_call < 0:  # through the origin: busy time purely per token
        per_call, per_token = 0.0, sxy / sxx
        inv = (0.0, 0.0, 1 / sxx)
        params = 1
    else:
        inv = (sxx / det, -sx / det, n / det)
        params = 2
    residual = sum((y - per_call - per_token * x) ** 2 for x, y in zip(out, busy, strict=True))
    sigma2 = residual / (n - params) if n > params else 0.0
    return Throughput(
        "ledger",
        per_call,
        per_token,
        calls=n,
        tokens=int(sx),
        busy_s=sy,
        newest=newest,
        oldest=oldest,
        model=model,
        _sigma2=sigma2,
        _inv=inv,
    )
