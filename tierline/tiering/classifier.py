"""The classifier stage: the shipped (or a user's) model, calibrated, with readable evidence."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .calibration import Calibration, decide, shift_prior
from .features import DENSE_NAMES, FeatureBatch, featurize
from .model import TierModel, load_default, load_model, softmax
from .vote import TierVote

__all__ = ["TierClassifier"]

# Readable names for the dense features that most often decide a job.
_DENSE_LABELS: dict[str, str] = {
    "log_chars": "length",
    "log_tokens": "length",
    "log_lines": "many lines",
    "frac_symbols": "symbol-heavy",
    "frac_digits": "numbers",
    "count['$']": "math notation",
    "count['\\\\']": "LaTeX",
    "count['{']": "braces",
    "count['}']": "braces",
    "count['=']": "equations",
    "count['^']": "exponents",
    "count['?']": "question",
    "count['`']": "code block",
    "count[';']": "code syntax",
    "count['#']": "headings/comments",
    "choice_lines": "multiple choice",
    "list_lines": "list structure",
    "starts_with_question_word": "question form",
    "ends_with_question": "question form",
}


def _label(name: str) -> str:
    if name.startswith("lex["):
        return name[4:-1] + " words"
    return _DENSE_LABELS.get(name, name)


class TierClassifier:
    """Scores jobs with the linear model and turns the scores into votes."""

    def __init__(self, model: TierModel, calibration: Calibration) -> None:
        self.model = model
        self.calibration = calibration

    @classmethod
    def load(cls, path: str | Path | None, calibration: Calibration) -> TierClassifier:
        """The model at ``path``, or the one shipped with tierline."""
        return cls(load_model(path) if path else load_default(), calibration)

    def score(self, texts: Sequence[str]) -> list[TierVote]:
        """One vote per text: the calibrated tier, its posterior and the strongest evidence."""
        if not texts:
            return []
        batch = featurize(texts)
        logits = self.model.logits(batch)
        post = shift_prior(softmax(logits), self.model.train_prior, self.calibration.prior)
        tiers = decide(post, self.calibration)
        words = _top_words(self.model, batch, tiers, texts)
        dense = _top_dense(self.model, batch, tiers)
        votes = []
        for i, tier in enumerate(tiers.tolist()):
            p = post[i]
            evidence = ", ".join(dict.fromkeys([*dense[i], *words[i]])) or "no strong feature"
            votes.append(
                TierVote(
                    tier,
                    f"classifier p=({p[0]:.2f},{p[1]:.2f},{p[2]:.2f}): {evidence}",
                    float(p[tier - 1]),
                    "classifier",
                )
            )
        return votes


def _top_dense(
    model: TierModel, batch: FeatureBatch, tiers: npt.NDArray[np.int64]
) -> list[list[str]]:
    """Up to two dense features that pushed each document hardest toward its tier."""
    z = (batch.dense - model.dense_mean) / model.dense_std
    w = model.w_dense
    # Contribution to the chosen tier relative to the mean over tiers.
    rel = w - w.mean(axis=1, keepdims=True)
    contrib = z * rel[:, tiers - 1].T
    top = np.argsort(-contrib, axis=1)[:, :2]
    out = []
    for i in range(batch.size):
        out.append([_label(DENSE_NAMES[j]) for j in top[i] if contrib[i, j] > 0.5])
    return out


def _top_words(
    model: TierModel, batch: FeatureBatch, tiers: npt.NDArray[np.int64], texts: Sequence[str]
) -> list[list[str]]:
    """The single word whose weight pushed each document hardest toward its tier, quoted."""
    buckets, starts = batch.parts[0]
    if len(buckets) == 0:
        return [[] for _ in texts]
    rel = model.w_hash - model.w_hash.mean(axis=1, keepdims=True)
    doc = np.repeat(np.arange(batch.size), np.diff(np.append(starts, len(buckets))))
    contrib = rel[buckets, tiers[doc] - 1]
    best = np.maximum.reduceat(np.append(contrib, -np.inf), np.minimum(starts, len(buckets)))
    out: list[list[str]] = [[] for _ in texts]
    winners = np.flatnonzero(contrib >= best[doc] - 1e-9)
    seen = set()
    for t in winners.tolist():
        d = int(doc[t])
        if d in seen or contrib[t] < 0.05:
            continue
        seen.add(d)
        word = batch.token_text(t)
        if word:
            out[d].append(repr(word))
    return out
