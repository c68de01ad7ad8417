"""The tiering pipeline: override -> user rules -> heuristics -> classifier -> optional judge.

Each rule stage is a pure callable `Job -> TierVote | None`; the first vote wins, so the order in
`Tierer.stages` is the precedence. Jobs no rule decides go to the classifier, which scores them a
batch at a time (its cost is per batch, not per job). The judge, when enabled, is asked only
about jobs the classifier is unsure of.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..config import TieringConfig, TieringRule
from ..jobs import InvalidLine, Job, Result
from .heuristics import HEURISTICS, default_rule, default_vote, empty_prompt_rule, task_hint_rule
from .vote import TierVote

if TYPE_CHECKING:
    from .calibration import Calibration

__all__ = [
    "BATCH",
    "Rule",
    "Scorer",
    "Tierer",
    "UserRule",
    "calibration_from_config",
    "classify",
]

Rule = Callable[[Job], TierVote | None]

# Jobs scored per classifier call: big enough to amortise numpy's per-call overhead, small
# enough that memory stays flat and the first results stream out at once.
BATCH = 1024


class Scorer(Protocol):
    """A batch stage (the classifier, the judge): one vote per text."""

    def score(self, texts: Sequence[str]) -> list[TierVote]: ...


@runtime_checkable
class _Decides(Protocol):
    """A scorer that can answer without building votes (the shipped classifier)."""

    def decisions(
        self, texts: Sequence[str], digits: int | None = None
    ) -> tuple[list[int], list[str], list[float]]: ...


class Judge(Protocol):
    """Re-decides the votes it is given (only low-confidence ones are passed)."""

    def review(self, texts: Sequence[str], votes: Sequence[TierVote]) -> list[TierVote]: ...


def override_rule(job: Job) -> TierVote | None:
    """A job's own `tier` field always wins."""
    if job.tier is None:
        return None
    return TierVote(job.tier, "set by the job's 'tier' field", 1.0, "override")


class UserRule:
    """A config rule (regex, keywords or task hint) as a pipeline stage."""

    def __init__(self, rule: TieringRule, index: int) -> None:
        self.rule = rule
        self.pattern = re.compile(rule.pattern) if rule.pattern else None
        self.keywords = [k.lower() for k in rule.keywords]
        self.label = rule.name or f"tiering.rules[{index}]"

    def __call__(self, job: Job) -> TierVote | None:
        rule = self.rule
        if rule.task is not None and job.task == rule.task:
            return TierVote(rule.tier, f"rule {self.label}: task {rule.task!r}", 1.0, "rule")
        return self.on_text(job.text)

    def on_text(self, text: str) -> TierVote | None:
        """The vote on a job's text alone (a job without a `task` hint)."""
        if self.pattern is not None and (m := self.pattern.search(text)):
            why = f"rule {self.label}: matched {m.group(0)[:40]!r}"
            return TierVote(self.rule.tier, why, 1.0, "rule")
        if self.keywords:
            lowered = text.lower()
            for word in self.keywords:
                if word in lowered:
                    why = f"rule {self.label}: keyword {word!r}"
                    return TierVote(self.rule.tier, why, 1.0, "rule")
        return None


def user_rule(rule: TieringRule, index: int) -> Rule:
    """A config rule (regex, keywords or task hint) as a pipeline stage."""
    return UserRule(rule, index)


def calibration_from_config(
    config: TieringConfig, fitted: Calibration | None = None
) -> Calibration:
    """The model's fitted calibration (else the bias preset), with config's explicit values.

    ``fitted`` is what `tierline tiering calibrate` stored in the model file: it replaces the
    preset, and an explicit ``prior``/``escalate_2``/``escalate_3`` in config still wins.
    """
    from .calibration import BIAS_PRESETS  # imports numpy: only when a classifier is built

    cal = fitted or BIAS_PRESETS[config.bias]
    if config.prior is not None:
        cal = replace(cal, prior=config.prior)
    if config.escalate_2 is not None:
        cal = replace(cal, escalate_2=config.escalate_2)
    if config.escalate_3 is not None:
        cal = replace(cal, escalate_3=config.escalate_3)
    return cal


class Tierer:
    """Decides each job's tier with an explanation."""

    def __init__(
        self,
        stages: Sequence[Rule],
        classifier: Scorer | None = None,
        judge: Judge | None = None,
        judge_below: float = 0.0,
    ) -> None:
        self.stages = list(stages)
        self.classifier = classifier
        self.judge = judge
        self.judge_below = judge_below

    @classmethod
    def from_config(cls, config: TieringConfig, model: str | None = None) -> Tierer:
        """The pipeline a config describes; ``model`` overrides ``config.model``."""
        rules = [user_rule(rule, i) for i, rule in enumerate(config.rules)]
        heuristics = HEURISTICS if config.heuristics else []
        classifier = None
        if config.classifier:
            from .classifier import TierClassifier  # numpy only when the classifier is used
            from .model import load_default, load_model

            path = model or config.model
            weights = load_model(path) if path else load_default()
            classifier = TierClassifier(
                weights, calibration_from_config(config, weights.calibration)
            )
        judge = None
        if config.judge.enabled:
            from .judge import LlamaJudge

            judge = LlamaJudge.from_config(config.judge)
        return cls([override_rule, *rules, *heuristics], classifier, judge, config.judge.below)

    def __call__(self, job: Job) -> TierVote:
        return self.tier_batch([job])[0]

    def tier_batch(self, jobs: Sequence[Job]) -> list[TierVote]:
        """Votes for a batch of jobs, in order."""
        votes: list[TierVote | None] = [self.first_rule(job) for job in jobs]
        pending = [i for i, v in enumerate(votes) if v is None]
        if pending and self.classifier is not None:
            texts = [jobs[i].text for i in pending]
            for i, vote in zip(pending, self._classify(texts), strict=True):
                votes[i] = vote
        return [
            v if v is not None else default_rule(job) for v, job in zip(votes, jobs, strict=True)
        ]

    @property
    def text_rules(self) -> list[UserRule] | None:
        """The stages that can vote on a plain job (a non-blank prompt, nothing else), in order;
        None when a stage is of a kind this cannot tell, so every job must be built and asked.

        The override and the heuristics say nothing about such a job (no `tier`, no `task`, not
        empty); a user rule reads only its text. `tierline classify` asks these on the prompt
        alone instead of building a `Job` per line.
        """
        rules = []
        for stage in self.stages:
            if isinstance(stage, UserRule):
                rules.append(stage)
            elif stage not in _SILENT_ON_PLAIN:
                return None
        return rules

    def decide_texts(self, texts: Sequence[str]) -> tuple[list[int], list[str], list[float]]:
        """(tiers, whys, confidences) for the texts of jobs no rule decided, in order: what
        `tier_batch` would vote on them, without a vote object per job, each confidence
        rounded as `classify` writes it (`round(c, 3)`)."""
        if self.classifier is None:
            votes = [default_vote(len(text)) for text in texts]
        elif self.judge is None and isinstance(self.classifier, _Decides):
            return self.classifier.decisions(texts, digits=3)
        else:
            votes = self._classify(texts)
        confidences = [round(v.confidence, 3) for v in votes]
        return [v.tier for v in votes], [v.why for v in votes], confidences

    def first_rule(self, job: Job) -> TierVote | None:
        """The vote of the first rule stage with an opinion (None: the classifier decides)."""
        for stage in self.stages:
            vote = stage(job)
            if vote is not None:
                return vote
        return None

    def _classify(self, texts: Sequence[str]) -> list[TierVote]:
        assert self.classifier is not None
        votes = self.classifier.score(texts)
        if self.judge is None:
            return votes
        unsure = [i for i, v in enumerate(votes) if v.confidence < self.judge_below]
        if unsure:
            reviewed = self.judge.review([texts[i] for i in unsure], [votes[i] for i in unsure])
            for i, vote in zip(unsure, reviewed, strict=True):
                votes[i] = vote
        return votes


_SILENT_ON_PLAIN: tuple[Rule, ...] = (override_rule, task_hint_rule, empty_prompt_rule)


def classify(items: Iterable[Job | InvalidLine], tierer: Tierer) -> Iterator[dict[str, Any]]:
    """Each job back as its input object plus `tier`, `why` and `confidence`.

    The output is itself a valid input: `tierline classify jobs.jsonl | tierline run -` keeps
    the decisions (the `tier` field is an override). Bad lines come back as error records.
    Jobs are tiered a batch at a time; output order is input order.
    """
    it = iter(items)
    while chunk := list(islice(it, BATCH)):
        jobs = [item for item in chunk if isinstance(item, Job)]
        votes = iter(tierer.tier_batch(jobs))
        for item in chunk:
            if isinstance(item, InvalidLine):
                yield Result.invalid(item).to_dict()
                continue
            vote = next(votes)
            yield {
                **item.raw,
                "tier": vote.tier,
                "why": vote.why,
                "confidence": round(vote.confidence, 3),
            }
