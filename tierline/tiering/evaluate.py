"""Measure a tierer against labelled prompts: the numbers `tierline tiering eval` prints.

`leave_one_source_out` is the honest estimate: it holds out every row of one source repository at
a time, trains on the rest and predicts the held-out rows, so each prediction comes from a model
that never saw that source's templates, phrasing or topics.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..jobs import Job, Message
from .outcomes import DECISIONS, Outcome, RouterMetrics, router_metrics
from .pipeline import BATCH, Tierer
from .train import Design, LabelledPrompt, TrainConfig, design, fit, source_group
from .vote import TierVote

__all__ = [
    "Metrics",
    "evaluate_outcomes",
    "evaluate_rows",
    "labelled_jobs",
    "leave_one_source_out",
    "metrics",
]


@dataclass(frozen=True, slots=True)
class Metrics:
    """Accuracy, macro-F1, per-tier precision/recall, confusion and the costly mistake rate."""

    n: int
    accuracy: float
    macro_f1: float
    precision: tuple[float, float, float]
    recall: tuple[float, float, float]
    f1: tuple[float, float, float]
    confusion: tuple[
        tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]
    ]  # rows: true tier 1..3, columns: predicted
    tier3_to_tier1: float  # share of true tier-3 jobs predicted tier 1 (the user-failing error)
    predicted_mix: tuple[float, float, float]

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view (`tierline tiering eval --json`)."""
        return {
            "n": self.n,
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "per_tier": {
                str(t): {
                    "precision": round(self.precision[t - 1], 4),
                    "recall": round(self.recall[t - 1], 4),
                    "f1": round(self.f1[t - 1], 4),
                    "support": sum(self.confusion[t - 1]),
                }
                for t in (1, 2, 3)
            },
            "confusion": {
                "rows": "true tier 1..3",
                "columns": "predicted tier 1..3",
                "matrix": [list(r) for r in self.confusion],
            },
            "tier3_to_tier1": round(self.tier3_to_tier1, 4),
            "predicted_mix": [round(x, 4) for x in self.predicted_mix],
        }


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def _row(r: npt.NDArray[np.int64]) -> tuple[int, int, int]:
    return int(r[0]), int(r[1]), int(r[2])


def metrics(true: Sequence[int], pred: Sequence[int]) -> Metrics:
    """Compare true and predicted tiers (each 1, 2 or 3)."""
    if len(true) != len(pred):
        raise ValueError("true and predicted tiers differ in length")
    cm = np.zeros((3, 3), dtype=np.int64)
    np.add.at(cm, (np.asarray(true) - 1, np.asarray(pred) - 1), 1)
    diag = np.diag(cm).astype(float)
    precision = tuple(_ratio(diag[k], cm[:, k].sum()) for k in range(3))
    recall = tuple(_ratio(diag[k], cm[k].sum()) for k in range(3))
    f1 = tuple(_ratio(2 * p * r, p + r) for p, r in zip(precision, recall, strict=True))
    present = [k for k in range(3) if cm[k].sum() > 0]
    n = int(cm.sum())
    return Metrics(
        n=n,
        accuracy=_ratio(diag.sum(), n),
        macro_f1=float(np.mean([f1[k] for k in present])) if present else 0.0,
        precision=(precision[0], precision[1], precision[2]),
        recall=(recall[0], recall[1], recall[2]),
        f1=(f1[0], f1[1], f1[2]),
        confusion=(_row(cm[0]), _row(cm[1]), _row(cm[2])),
        tier3_to_tier1=_ratio(cm[2, 0], cm[2].sum()),
        predicted_mix=(
            _ratio(cm[:, 0].sum(), n),
            _ratio(cm[:, 1].sum(), n),
            _ratio(cm[:, 2].sum(), n),
        ),
    )


def source_file(source: str) -> str:
    """The file a ``source`` field names (``owner/name:path (label)`` -> ``owner/name:path``)."""
    return source.split(" (", 1)[0].strip() or "unknown"


def leave_one_source_out(
    rows: Sequence[LabelledPrompt],
    config: TrainConfig | None = None,
    X: Design | None = None,
    level: str = "repo",
    folds: int = 0,
) -> tuple[npt.NDArray[np.float64], list[str]]:
    """Out-of-source class probabilities for every row, and the held-out group of each row.

    ``level="repo"`` holds out one source repository at a time (the strict estimate);
    ``level="file"`` groups by source file and, with ``folds > 0``, holds out a fixed hash-chosen
    fold of files at a time (cheaper than one model per file). A held-out group whose tier has
    no other source is still held out: the model then has to generalise from other tiers.
    """
    X = X or design([r.prompt for r in rows])
    key = source_group if level == "repo" else source_file
    groups = [key(r.source) for r in rows]
    if folds > 0:
        groups = [f"fold {zlib.crc32(g.encode()) % folds}" for g in groups]
    probs = np.zeros((len(rows), 3))
    for g in sorted(set(groups)):
        held = np.array([x == g for x in groups])
        train_rows = [r for r, h in zip(rows, held, strict=True) if not h]
        model = fit(X.subset(~held), train_rows, config)
        probs[held] = model.predict_proba([r.prompt for r, h in zip(rows, held, strict=True) if h])
    return probs, groups


def labelled_jobs(rows: Sequence[LabelledPrompt | Outcome], source: str) -> list[Job]:
    """Prompts as jobs, *without* their label or scores: a `tier` field would be an override."""
    return [
        Job(id=f"{source}:{n}", line=n, source=source, messages=(Message("user", r.prompt),))
        for n, r in enumerate(rows, 1)
    ]


def _votes(rows: Sequence[LabelledPrompt | Outcome], tierer: Tierer, source: str) -> list[TierVote]:
    jobs = labelled_jobs(rows, source)
    votes: list[TierVote] = []
    for start in range(0, len(jobs), BATCH):
        votes.extend(tierer.tier_batch(jobs[start : start + BATCH]))
    return votes


def evaluate_rows(rows: Sequence[LabelledPrompt], tierer: Tierer, source: str = "eval") -> Metrics:
    """Run the tiering pipeline on labelled prompts and compare with their labels."""
    return metrics([r.tier for r in rows], [v.tier for v in _votes(rows, tierer, source)])


def evaluate_outcomes(
    rows: Sequence[Outcome], tierer: Tierer, num_results: int = 10, source: str = "outcomes"
) -> dict[str, RouterMetrics]:
    """Router metrics of the pipeline's two decisions (tier 1 vs >= 2, tier <= 2 vs 3).

    Each prompt's router score is the pipeline's probability of the escalated tiers; the
    operating point is where the configured thresholds actually put the decision.
    """
    votes = _votes(rows, tierer, source)
    weak = [r.weak_score for r in rows]
    strong = [r.strong_score for r in rows]
    return {
        name: router_metrics(
            [v.escalation_score(tier) for v in votes],
            weak,
            strong,
            num_results,
            escalated=[v.tier >= tier for v in votes],
        )
        for name, tier in DECISIONS.items()
    }
