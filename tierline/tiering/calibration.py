"""From class probabilities to a tier: prior shift, then escalation thresholds.

The classifier is trained with every class weighted equally, so its probabilities answer "which
tier is this, if tiers were equally common". Real traffic is closer to 70/25/5, so Bayes' rule
re-weights them by ``prior / train_prior`` first. The tier is then chosen by escalation
thresholds on the shifted posterior:

* tier 3 when ``P(tier 3) >= escalate_3``;
* else tier 2 when ``P(tier >= 2) >= escalate_2``;
* else tier 1.

Lower thresholds spend more money to fail fewer users. The ``bias`` presets are three points on
that curve, measured in docs/tiering.md; explicit ``prior``/thresholds in config override them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["BIAS_PRESETS", "Bias", "Calibration", "decide", "fit_thresholds"]

Bias = Literal["quality", "balanced", "cost"]

PRODUCTION_PRIOR = (0.70, 0.25, 0.05)


@dataclass(frozen=True, slots=True)
class Calibration:
    """A prior for the traffic being tiered and the two escalation thresholds."""

    prior: tuple[float, float, float] = PRODUCTION_PRIOR
    escalate_2: float = 0.5
    escalate_3: float = 0.5


UNIFORM_PRIOR = (1 / 3, 1 / 3, 1 / 3)

# Chosen from the leave-one-source-out and realistic-set measurements in docs/tiering.md.
# Off its training sources the classifier under-rates tier 3, so applying the full production
# prior (x0.15 on tier-3 odds) sends too many hard jobs to tier 1: only "cost" does that.
BIAS_PRESETS: dict[str, Calibration] = {
    "quality": Calibration(prior=UNIFORM_PRIOR, escalate_2=0.40, escalate_3=0.30),
    "balanced": Calibration(prior=UNIFORM_PRIOR, escalate_2=0.50, escalate_3=0.40),
    "cost": Calibration(prior=PRODUCTION_PRIOR, escalate_2=0.50, escalate_3=0.50),
}


def shift_prior(
    probs: npt.NDArray[np.float64],
    train_prior: npt.NDArray[np.float64],
    prior: tuple[float, float, float],
) -> npt.NDArray[np.float64]:
    """Re-weight probabilities learnt under ``train_prior`` to a new class prior (Bayes' rule)."""
    w = np.asarray(prior, dtype=np.float64) / train_prior
    shifted = probs * w
    out: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
    return out


def decide(posterior: npt.NDArray[np.float64], cal: Calibration) -> npt.NDArray[np.int64]:
    """Tiers (1..3) from shifted posteriors and the escalation thresholds."""
    tiers = np.ones(len(posterior), dtype=np.int64)
    tiers[posterior[:, 1] + posterior[:, 2] >= cal.escalate_2] = 2
    tiers[posterior[:, 2] >= cal.escalate_3] = 3
    return tiers


def fit_thresholds(
    posterior: npt.NDArray[np.float64],
    shares: tuple[float, float, float],
    fixed: tuple[int, int, int] = (0, 0, 0),
) -> tuple[float, float]:
    """``(escalate_2, escalate_3)`` under which this traffic splits at ``shares``.

    ``posterior`` holds the (prior-shifted) probabilities of the jobs the classifier decides;
    ``fixed`` counts the jobs that rules and heuristics already put in tiers 1, 2, 3, so the
    whole traffic, not just the classifier's part, lands at the shares. This is RouteLLM's
    calibration (a threshold at the score quantile that gives the wanted strong-call share),
    done for both decisions: tier 3 first, then tier 2 among the rest. Each threshold sits
    halfway between the last job in and the first job out, so ties aside the counts are exact.
    """
    n = len(posterior)
    total = n + sum(fixed)
    p3 = posterior[:, 2]
    n3 = int(np.clip(round(shares[2] * total) - fixed[2], 0, n))
    e3 = _cut(np.sort(p3)[::-1], n3)
    rest = posterior[p3 < e3]
    n1 = int(np.clip(round(shares[0] * total) - fixed[0], 0, len(rest)))
    e2 = _cut(np.sort(rest[:, 1] + rest[:, 2])[::-1], len(rest) - n1)
    return e2, e3


def _cut(desc: npt.NDArray[np.float64], k: int) -> float:
    """A threshold with exactly the first ``k`` of these descending values at or above it."""
    above = float(desc[k - 1]) if k > 0 else 1.0
    below = float(desc[k]) if k < len(desc) else 0.0
    # Config requires thresholds strictly inside (0, 1).
    return float(np.clip((above + below) / 2, 1e-6, 1 - 1e-6))
