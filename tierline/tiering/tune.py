"""Fit tiering to a user's own work: outcomes become labels, traffic sets the thresholds.

* `outcome_labels` turns ``{"prompt", "weak_score", "strong_score"}`` outcomes into tier labels
  by how much quality the weak route loses (`tierline tiering train --outcomes`);
* `calibrate` finds the escalation thresholds under which a sample of the user's jobs splits
  at chosen tier shares (`tierline tiering calibrate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..jobs import Job
from .calibration import Calibration, decide, fit_thresholds
from .classifier import TierClassifier
from .model import TierModel
from .outcomes import Outcome
from .pipeline import BATCH, Tierer
from .train import OUTCOME_SOURCE, LabelledPrompt

__all__ = ["LOSS_TIER_2", "LOSS_TIER_3", "calibrate", "outcome_labels"]

# The weak route's loss, as a share of the file's score range, from which a prompt needs tier 2
# or tier 3. On a 1-10 grade a loss of one point or less keeps tier 1 (the weak answer was as
# good, up to grader noise); four points or more (a good answer against a failed one) is tier 3.
LOSS_TIER_2 = 0.12
LOSS_TIER_3 = 0.40


def outcome_labels(rows: Sequence[Outcome], name: str = "outcomes") -> list[LabelledPrompt]:
    """One labelled prompt per outcome: tier 1 when the weak route lost (almost) nothing.

    The loss ``strong_score - weak_score`` is divided by the range of all scores in ``rows``,
    so 0/1 correctness and 1-10 grades mean the same thing.
    """
    scores = np.array([(r.weak_score, r.strong_score) for r in rows], dtype=np.float64)
    span = float(scores.max() - scores.min()) if len(rows) else 0.0
    out = []
    for r in rows:
        loss = (r.strong_score - r.weak_score) / span if span else 0.0
        tier = 3 if loss >= LOSS_TIER_3 else 2 if loss >= LOSS_TIER_2 else 1
        out.append(LabelledPrompt(r.prompt, tier, f"{OUTCOME_SOURCE}{name}", "outcome"))
    return out


def calibrate(
    jobs: Sequence[Job], tierer: Tierer, shares: tuple[float, float, float]
) -> tuple[TierModel, Calibration, tuple[float, float, float]]:
    """The classifier's model, the calibration that splits ``jobs`` at ``shares``, and the split
    it actually gives.

    Jobs that rules or heuristics decide keep their tiers and count toward the shares; the
    thresholds are fitted on the classifier's probabilities for the rest.
    """
    if not isinstance(tierer.classifier, TierClassifier):
        raise ValueError("calibrate needs the classifier stage ([tiering] classifier = true)")
    classifier = tierer.classifier
    fixed = [0, 0, 0]
    texts = []
    for job in jobs:
        vote = tierer.first_rule(job)
        if vote is None:
            texts.append(job.text)
        else:
            fixed[vote.tier - 1] += 1
    post = np.vstack(
        [np.zeros((0, 3))]
        + [classifier.posterior(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]
    )
    e2, e3 = fit_thresholds(post, shares, (fixed[0], fixed[1], fixed[2]))
    cal = replace(classifier.calibration, escalate_2=e2, escalate_3=e3)
    counts = np.bincount(decide(post, cal) - 1, minlength=3) + np.array(fixed)
    got = counts / max(1, len(jobs))
    return classifier.model, cal, (float(got[0]), float(got[1]), float(got[2]))
