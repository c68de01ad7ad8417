"""Metrics are right on a hand-checked confusion; the realistic set stays within its floor."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tierline.config import TieringConfig
from tierline.tiering.evaluate import evaluate_outcomes, evaluate_rows, labelled_jobs, metrics
from tierline.tiering.outcomes import Outcome
from tierline.tiering.pipeline import Tierer, override_rule
from tierline.tiering.train import LabelledPrompt, read_labelled
from tierline.tiering.vote import TierVote

from .conftest import DATA


def test_metrics_by_hand() -> None:
    """Accuracy, per-tier precision/recall, macro-F1 and the tier-3 -> tier-1 share."""
    true = [1, 1, 1, 2, 2, 3, 3, 3, 3, 3]
    pred = [1, 1, 2, 2, 1, 3, 3, 3, 1, 2]
    m = metrics(true, pred)
    assert m.accuracy == pytest.approx(0.6)
    assert m.confusion == ((2, 1, 0), (1, 1, 0), (1, 1, 3))
    assert m.precision == pytest.approx((0.5, 1 / 3, 1.0))
    assert m.recall == pytest.approx((2 / 3, 0.5, 0.6))
    assert m.tier3_to_tier1 == pytest.approx(0.2)
    f1 = [2 * p * r / (p + r) for p, r in zip(m.precision, m.recall, strict=True)]
    assert m.macro_f1 == pytest.approx(sum(f1) / 3)


def test_realistic_set_floor() -> None:
    """The shipped pipeline keeps its measured quality on the hand-written set (a regression
    floor a little under the number in docs/tiering.md)."""
    rows = read_labelled(DATA / "realistic-eval.jsonl")
    m = evaluate_rows(rows, Tierer.from_config(TieringConfig()))
    assert m.n == len(rows) >= 150
    assert m.macro_f1 >= 0.72
    assert m.tier3_to_tier1 <= 0.10


class _AlwaysTier1:
    """A classifier stand-in that says tier 1 with certainty, whatever it is shown."""

    def score(self, texts: Sequence[str]) -> list[TierVote]:
        return [TierVote(1, "fixed", 1.0, "classifier", (1.0, 0.0, 0.0)) for _ in texts]


def test_eval_never_shows_the_label_to_the_pipeline() -> None:
    """A labelled row's `tier` must not reach the pipeline, where it would be an override.

    The pipeline has the override stage first; if eval passed the label on, every row would be
    predicted as labelled and accuracy would be 1.0 instead of the honest 0.0.
    """
    rows = [LabelledPrompt(f"prompt {i}", 3) for i in range(5)]
    tierer = Tierer([override_rule], _AlwaysTier1())
    m = evaluate_rows(rows, tierer)
    assert m.confusion[2] == (5, 0, 0) and m.accuracy == 0.0
    assert all(j.tier is None and "tier" not in j.raw for j in labelled_jobs(rows, "x"))


def test_outcome_scores_never_reach_the_pipeline() -> None:
    """Router scores depend on the prompts only: swapping which route won changes the
    curve's qualities but not the scores the router gave, nor its decisions."""
    prompts = ["What is 2+2?", "Prove there are infinitely many primes.", "Summarise: hi"]
    a = [Outcome(p, 1.0, 2.0) for p in prompts]
    b = [Outcome(p, 2.0, 1.0) for p in prompts]
    tierer = Tierer.from_config(TieringConfig())
    ra, rb = evaluate_outcomes(a, tierer), evaluate_outcomes(b, tierer)
    for name in ra:
        assert [t for t, _, _ in ra[name].curve] == [t for t, _, _ in rb[name].curve]
        assert ra[name].operating_share == rb[name].operating_share
