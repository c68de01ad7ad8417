"""The shipped classifier: loads, tiers obvious jobs right, explains itself; calibration moves
decisions in the documented direction."""

from __future__ import annotations

import numpy as np
import pytest

from tierline.config import TieringConfig
from tierline.jobs import Job, Message
from tierline.tiering.calibration import BIAS_PRESETS, Calibration, decide, shift_prior
from tierline.tiering.classifier import TierClassifier
from tierline.tiering.model import load_default
from tierline.tiering.pipeline import Tierer
from tierline.tiering.train import read_labelled

from .conftest import DATA

OBVIOUS = [
    (1, "What's the capital of France?"),
    (1, "Summarize this email in one sentence: the 3pm meeting is moved to Thursday."),
    (
        1,
        "Classify the sentiment of this review as positive or negative: 'Terrible, broke in a day.'",
    ),
    (2, "Write a Python function that merges two sorted linked lists and add unit tests for it."),
    (
        2,
        "Write a 1,000-word persuasive essay on urban cycling with a formal, warm tone and three cited studies.",
    ),
    (
        3,
        "Let $p$ be an odd prime. Prove that $\\sum_{k=1}^{p-1} k^{-2} \\equiv 0 \\pmod p$ and determine all $n$ for which $\\binom{2n}{n}$ is divisible by $n^2$.",
    ),
    (
        3,
        "Find all functions $f:\\mathbb{R}\\to\\mathbb{R}$ such that $f(x+f(y)) = f(x) + y$ for all real $x, y$. Prove your answer rigorously.",
    ),
]


@pytest.fixture(scope="module")
def balanced() -> TierClassifier:
    return TierClassifier(load_default(), BIAS_PRESETS["balanced"])


def test_shipped_model_tiers_obvious_jobs(balanced: TierClassifier) -> None:
    """Clear examples of each tier get that tier."""
    votes = balanced.score([text for _, text in OBVIOUS])
    assert [v.tier for v in votes] == [tier for tier, _ in OBVIOUS]


def test_votes_explain_themselves(balanced: TierClassifier) -> None:
    """Each vote names the stage, the calibrated probabilities and some evidence."""
    vote = balanced.score([OBVIOUS[-1][1]])[0]
    assert vote.stage == "classifier"
    assert vote.why.startswith("classifier p=(")
    probs = [float(x) for x in vote.why.split("(", 1)[1].split(")", 1)[0].split(",")]
    assert abs(sum(probs) - 1) < 0.02 and vote.confidence == pytest.approx(
        probs[vote.tier - 1], abs=0.01
    )
    assert "no strong feature" not in vote.why


def test_shift_prior_is_bayes() -> None:
    """Moving to a prior that favours tier 1 raises P(tier 1) and keeps rows normalised."""
    p = np.array([[0.4, 0.3, 0.3]])
    shifted = shift_prior(p, np.array([1 / 3, 1 / 3, 1 / 3]), (0.7, 0.25, 0.05))
    assert shifted.sum() == pytest.approx(1.0)
    assert shifted[0, 0] > 0.4 and shifted[0, 2] < 0.3


def test_thresholds_order_tiers() -> None:
    """decide() escalates by the thresholds: tier 3 first, then 'at least tier 2'."""
    post = np.array([[0.8, 0.15, 0.05], [0.45, 0.35, 0.2], [0.2, 0.2, 0.6]])
    assert decide(post, Calibration(escalate_2=0.5, escalate_3=0.5)).tolist() == [1, 2, 3]
    assert decide(post, Calibration(escalate_2=0.6, escalate_3=0.7)).tolist() == [1, 1, 2]
    assert decide(post, Calibration(escalate_2=0.9, escalate_3=0.9)).tolist() == [1, 1, 1]


def test_bias_moves_decisions_in_the_expected_direction() -> None:
    """On realistic prompts, 'quality' escalates at least as often as 'balanced', which
    escalates at least as often as 'cost' (job by job, not just on average)."""
    texts = [r.prompt for r in read_labelled(DATA / "realistic-eval.jsonl")]
    model = load_default()
    tiers = {
        b: np.array([v.tier for v in TierClassifier(model, BIAS_PRESETS[b]).score(texts)])
        for b in BIAS_PRESETS
    }
    assert (tiers["quality"] >= tiers["balanced"]).all()
    assert (tiers["balanced"] >= tiers["cost"]).all()
    assert tiers["quality"].sum() > tiers["cost"].sum()


def test_short_everyday_questions_stay_in_tier_1() -> None:
    """The default pipeline keeps a quick arithmetic question in tier 1 (it went to tier 2
    as "symbol-heavy" before short chat-style rows were added to training) and still sends a
    short hard question up."""
    tierer = Tierer.from_config(TieringConfig())

    def tier(text: str) -> int:
        return tierer(Job(id="q", line=1, source="t", messages=(Message("user", text),))).tier

    assert tier("What is 2+2?") == 1
    assert tier("Prove that there are infinitely many primes of the form 4k+3.") >= 2


def test_confidences_round_as_round_does() -> None:
    """`tierline classify` rounds a batch's confidences at once (`_rounded`); each must be
    exactly `round(c, 3)`: random values, exact ties, their neighbouring floats, the ends of
    the range and non-finite values."""
    import math

    from tierline.tiering.classifier import _rounded

    rng = np.random.default_rng(3)
    ties = (np.arange(1001) + 0.5) / 1000
    values = np.concatenate(
        [
            rng.random(200_000),
            rng.random(50_000) ** 8,
            ties,
            np.nextafter(ties, 0),
            np.nextafter(ties, 1),
            np.array([0.0, -0.0, 1.0, 0.0625, 0.9995, 1e-12, math.inf, -math.inf]),
        ]
    )
    got = _rounded(values, 3)
    assert [repr(x) for x in got] == [repr(round(x, 3)) for x in values.tolist()]
    assert math.isnan(_rounded(np.array([math.nan]), 3)[0])
