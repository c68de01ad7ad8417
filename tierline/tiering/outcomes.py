"""Router metrics on outcomes: how much of the strong model's quality a tier decision keeps.

An outcomes file has one line per prompt, ``{"prompt", "weak_score", "strong_score"}``: how
well a cheap (weak) route and an expensive (strong) route answered it, on any scale. A tiering
decision is a router: every prompt it escalates gets the strong answer, the others the weak one.

The metrics are RouteLLM's (Ong et al. 2024, ``routellm/evals``), computed the same way so the
numbers are comparable with the published ones:

* the router gives each prompt a score (here: the posterior probability of the escalated
  tiers); thresholds are the ``num_results + 1`` quantile edges of those scores (linear
  interpolation, as ``pandas.qcut``); at each edge the prompts with ``score >= edge`` (``>``
  for the last edge, so that it routes none) go to the strong route;
* each threshold gives a point (strong-call share, mean quality); the points sorted by share
  are joined by straight lines;
* **PGR** (performance gap recovered) of a quality ``q`` is ``(q - weak) / (strong - weak)``
  where ``weak`` and ``strong`` are the all-weak and all-strong mean qualities;
* **APGR** is the area under the PGR curve over the strong share (trapezoid rule, normalised by
  the share range, which is [0, 1] here): 0.5 for a router that escalates at random, 1 or more
  for a perfect one (a perfect router can beat the strong model when the weak one sometimes
  wins);
* **CPT(x%)** is the smallest strong-call share at which the curve reaches PGR ``x``. RouteLLM
  computes it with ``np.interp`` over the quality axis, which assumes quality rises with the
  share; here it is the first crossing along the curve, which is the same number whenever the
  curve rises and still defined when it does not.

A random router's expected curve is the straight line from (0, weak) to (1, strong): APGR 0.5,
CPT(50%) = 50%, CPT(80%) = 80%. The oracle (escalate exactly the prompts with the largest gain
first) bounds what any router could do on the same outcomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

__all__ = [
    "DECISIONS",
    "Outcome",
    "RouterMetrics",
    "read_outcomes",
    "router_metrics",
]

FloatArray = npt.NDArray[np.float64]

# The two routing decisions a three-tier pipeline makes, and the tiers each one escalates.
DECISIONS: dict[str, int] = {"tier 1 vs >=2": 2, "tier <=2 vs 3": 3}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How well a weak and a strong route answered one prompt (any scale, higher is better)."""

    prompt: str
    weak_score: float
    strong_score: float


def read_outcomes(path: Path) -> list[Outcome]:
    """Read ``{"prompt", "weak_score", "strong_score"}`` lines; name the line of any bad one."""
    rows = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = orjson.loads(line)
                row = Outcome(str(d["prompt"]), float(d["weak_score"]), float(d["strong_score"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{path}:{n}: not an outcome line "
                    f'{{"prompt", "weak_score", "strong_score"}} ({e})'
                ) from e
            if not (np.isfinite(row.weak_score) and np.isfinite(row.strong_score)):
                raise ValueError(f"{path}:{n}: scores must be finite numbers")
            rows.append(row)
    return rows


@dataclass(frozen=True, slots=True)
class RouterMetrics:
    """One decision's quality-vs-cost curve and its summary numbers."""

    n: int
    weak_quality: float
    strong_quality: float
    curve: tuple[tuple[float, float, float], ...]  # (threshold, strong share, quality), by share
    apgr: float | None  # None when strong and weak are equally good (no gap to recover)
    cpt50: float | None  # strong share; None if the curve never reaches the target
    cpt80: float | None
    oracle_apgr: float | None
    operating_share: float | None = None  # the configured decision's strong share ...
    operating_pgr: float | None = None  # ... and the PGR it gets

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view (`tierline tiering eval --outcomes --json`)."""
        r = _round
        return {
            "n": self.n,
            "weak_quality": r(self.weak_quality),
            "strong_quality": r(self.strong_quality),
            "apgr": r(self.apgr),
            "cpt50": r(self.cpt50),
            "cpt80": r(self.cpt80),
            "random": {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8},
            "oracle_apgr": r(self.oracle_apgr),
            "operating_point": {
                "strong_share": r(self.operating_share),
                "pgr": r(self.operating_pgr),
            },
            "curve": [
                {"threshold": r(t), "strong_share": r(s), "quality": r(q)} for t, s, q in self.curve
            ],
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def router_metrics(
    scores: Sequence[float] | FloatArray,
    weak: Sequence[float] | FloatArray,
    strong: Sequence[float] | FloatArray,
    num_results: int = 10,
    escalated: Sequence[bool] | npt.NDArray[np.bool_] | None = None,
) -> RouterMetrics:
    """RouteLLM's sweep and metrics for a router that escalates prompts with high ``scores``.

    ``escalated``, if given, is the decision actually configured (e.g. the pipeline's tiers),
    reported as the operating point on the same axes.
    """
    s, w, st = (np.asarray(x, dtype=np.float64) for x in (scores, weak, strong))
    if not (len(s) == len(w) == len(st)) or len(s) == 0:
        raise ValueError("scores, weak and strong need the same, non-zero length")
    weak_q, strong_q = float(w.mean()), float(st.mean())
    edges = np.quantile(s, np.linspace(0.0, 1.0, num_results + 1))
    points = []
    for i, edge in enumerate(edges):
        sel = s > edge if i == len(edges) - 1 else s >= edge
        points.append((float(edge), float(sel.mean()), float(np.where(sel, st, w).mean())))
    points.sort(key=lambda p: p[1])  # stable: equal shares keep threshold order
    share = np.array([p[1] for p in points])
    quality = np.array([p[2] for p in points])
    gap = strong_q - weak_q
    op_share = op_pgr = None
    if escalated is not None:
        e = np.asarray(escalated, dtype=bool)
        op_share = float(e.mean())
        op_pgr = (float(np.where(e, st, w).mean()) - weak_q) / gap if gap else None
    # With no gap between the routes there is nothing to recover: the ratios are undefined.
    pgr = (quality - weak_q) / gap if gap else None
    return RouterMetrics(
        n=len(s),
        weak_quality=weak_q,
        strong_quality=strong_q,
        curve=tuple(points),
        apgr=_area(share, pgr) if pgr is not None else None,
        cpt50=_first_crossing(share, pgr, 0.5) if pgr is not None else None,
        cpt80=_first_crossing(share, pgr, 0.8) if pgr is not None else None,
        oracle_apgr=_oracle_apgr(w, st) if gap else None,
        operating_share=op_share,
        operating_pgr=op_pgr,
    )


def _area(x: FloatArray, y: FloatArray) -> float:
    """Trapezoid area under y(x), divided by the x range (RouteLLM's normalisation)."""
    span = float(x[-1] - x[0])
    if span <= 0:
        return float("nan")
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / span)


def _first_crossing(x: FloatArray, y: FloatArray, target: float) -> float | None:
    """The smallest x where the piecewise-linear curve through (x, y) reaches ``target``."""
    if y[0] >= target:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= target:
            # y[i-1] < target <= y[i]: interpolate inside this segment
            t = (target - y[i - 1]) / (y[i] - y[i - 1])
            return float(x[i - 1] + t * (x[i] - x[i - 1]))
    return None


def _oracle_apgr(weak: FloatArray, strong: FloatArray) -> float:
    """APGR of the router that escalates the largest gains first (and never a loss)."""
    gain = np.sort(np.maximum(strong - weak, 0.0))[::-1]
    n = len(gain)
    quality = weak.mean() + np.concatenate([[0.0], np.cumsum(gain)]) / n
    share = np.arange(n + 1) / n
    return _area(share, (quality - weak.mean()) / (strong.mean() - weak.mean()))
