"""Precedence of the pipeline stages, batching order, and when the judge is asked."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tierline.config import TieringConfig, TieringRule
from tierline.embedded import EMBEDDED_MODEL_FILE
from tierline.jobs import InvalidLine, Job, Message
from tierline.tiering.pipeline import Tierer, classify, override_rule, user_rule
from tierline.tiering.vote import TierVote


def job(text: str, *, tier: int | None = None, task: str | None = None, n: int = 1) -> Job:
    return Job(
        id=f"j{n}",
        line=n,
        source="t",
        messages=(Message("user", text),),
        tier=tier,
        task=task,
        raw={"id": f"j{n}"},
    )


class FixedScorer:
    """A classifier stand-in: always the same tier and confidence; records what it saw."""

    def __init__(self, tier: int, confidence: float) -> None:
        self.tier, self.confidence = tier, confidence
        self.seen: list[str] = []

    def score(self, texts: Sequence[str]) -> list[TierVote]:
        self.seen.extend(texts)
        return [TierVote(self.tier, "fixed", self.confidence, "classifier") for _ in texts]


class RecordingJudge:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def review(self, texts: Sequence[str], votes: Sequence[TierVote]) -> list[TierVote]:
        self.asked.extend(texts)
        return [TierVote(3, "judge says 3", v.confidence, "judge") for v in votes]


def tierer(scorer: FixedScorer, rules: list[TieringRule] | None = None) -> Tierer:
    from tierline.tiering.heuristics import HEURISTICS

    stages = [override_rule, *(user_rule(r, i) for i, r in enumerate(rules or [])), *HEURISTICS]
    return Tierer(stages, scorer)


def test_override_beats_rules_beats_heuristics_beats_classifier() -> None:
    """Each stage decides only what the stages before it left open."""
    scorer = FixedScorer(2, 0.9)
    t = tierer(scorer, [TieringRule(tier=3, keywords=["invoice"])])
    votes = t.tier_batch(
        [
            job("extract the invoice total", tier=1),  # override
            job("extract the invoice total", n=2),  # user rule
            job("please do it", task="summarize", n=3),  # heuristic: task hint
            job("please do it", n=4),  # classifier
        ]
    )
    assert [(v.tier, v.stage) for v in votes] == [
        (1, "override"),
        (3, "rule"),
        (1, "heuristic"),
        (2, "classifier"),
    ]
    assert scorer.seen == ["please do it"]  # only undecided jobs reach the classifier


def test_classify_keeps_order_and_invalid_lines() -> None:
    """Batched classification yields one record per input, in input order."""
    scorer = FixedScorer(2, 0.9)
    bad = InvalidLine(line=2, source="t", error="not JSON")
    items = [job("a", n=1), bad, job("b", tier=3, n=3)]
    out = list(classify(items, tierer(scorer)))
    assert [o.get("tier") for o in out] == [2, None, 3]
    assert out[1]["status"] == "invalid"
    assert out[0]["why"] == "fixed" and out[0]["confidence"] == 0.9


def test_judge_only_asked_when_unsure() -> None:
    """Jobs under the confidence threshold go to the judge; the others keep their vote."""
    judge = RecordingJudge()
    sure = Tierer([override_rule], FixedScorer(1, 0.9), judge, judge_below=0.5)
    unsure = Tierer([override_rule], FixedScorer(1, 0.3), judge, judge_below=0.5)
    assert sure(job("x")).tier == 1 and judge.asked == []
    assert unsure(job("y")).tier == 3 and judge.asked == ["y"]


def test_from_config_switches_stages_off() -> None:
    """heuristics = false and classifier = false leave the default rule for undecided jobs."""
    t = Tierer.from_config(TieringConfig(heuristics=False, classifier=False))
    vote = t(job("anything", task="summarize"))
    assert vote.stage == "default"


def test_from_config_uses_shipped_classifier() -> None:
    """The default config tiers an undecided job with the shipped classifier."""
    vote = Tierer.from_config(TieringConfig())(job("Prove that sqrt(2) is irrational."))
    assert vote.stage == "classifier" and vote.why.startswith("classifier p=")


def test_explicit_calibration_overrides_the_preset() -> None:
    """prior / escalate_2 / escalate_3 in config replace the bias preset's values."""
    from tierline.tiering.calibration import BIAS_PRESETS
    from tierline.tiering.pipeline import calibration_from_config

    cfg = TieringConfig(bias="cost", escalate_3=0.2)
    cal = calibration_from_config(cfg)
    assert cal.escalate_3 == 0.2
    assert cal.prior == BIAS_PRESETS["cost"].prior
    assert cal.escalate_2 == BIAS_PRESETS["cost"].escalate_2
    prior = (0.5, 0.3, 0.2)
    assert calibration_from_config(TieringConfig(prior=prior)).prior == prior


def test_cli_import_does_not_load_numpy() -> None:
    """`tierline --help` stays fast: the classifier runtime is imported only when used."""
    import subprocess
    import sys

    code = "import sys, tierline.cli; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.llama
def test_enabled_judge_loads_the_embedded_model_and_reviews() -> None:
    """`[tiering.judge] enabled = true` with no model_path: the real SmolLM2 GGUF (found in
    core, tierline/embedded.py, since tiering may not import dispatch) answers 1, 2 or 3 under
    its grammar, and the judged vote says so."""
    config = TieringConfig.model_validate({"judge": {"enabled": True, "n_ctx": 512}})
    tierer = Tierer.from_config(config)
    assert tierer.judge is not None
    [vote] = tierer.judge.review(
        ["Prove the Riemann hypothesis."], [TierVote(1, "c", 0.1, "classifier")]
    )
    assert vote.stage == "judge" and vote.tier in (1, 2, 3)
    assert vote.why.startswith(f"judge {EMBEDDED_MODEL_FILE}: tier {vote.tier}")
