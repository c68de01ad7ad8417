"""The tiering pipeline: per-job override -> user rules -> built-in heuristics -> default.

Each stage is a pure callable `Job -> TierVote | None`; the first vote wins, so the order in
`Tierer.stages` is the precedence. The trained classifier plugs in as one more stage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ..config import TieringConfig, TieringRule
from ..jobs import InvalidLine, Job, Result
from .heuristics import HEURISTICS, default_rule
from .vote import TierVote

__all__ = ["Rule", "Tierer", "classify", "override_rule", "user_rule"]

Rule = Callable[[Job], TierVote | None]


def override_rule(job: Job) -> TierVote | None:
    """A job's own `tier` field always wins."""
    if job.tier is None:
        return None
    return TierVote(job.tier, "set by the job's 'tier' field", 1.0, "override")


def user_rule(rule: TieringRule, index: int) -> Rule:
    """A config rule (regex, keywords or task hint) as a pipeline stage."""
    pattern = re.compile(rule.pattern) if rule.pattern else None
    keywords = [k.lower() for k in rule.keywords]
    label = rule.name or f"tiering.rules[{index}]"

    def apply(job: Job) -> TierVote | None:
        if rule.task is not None and job.task == rule.task:
            return TierVote(rule.tier, f"rule {label}: task {rule.task!r}", 1.0, "rule")
        if pattern is not None and (m := pattern.search(job.text)):
            return TierVote(rule.tier, f"rule {label}: matched {m.group(0)[:40]!r}", 1.0, "rule")
        if keywords:
            text = job.text.lower()
            for word in keywords:
                if word in text:
                    return TierVote(rule.tier, f"rule {label}: keyword {word!r}", 1.0, "rule")
        return None

    return apply


class Tierer:
    """Decides each job's tier with an explanation."""

    def __init__(self, stages: Sequence[Rule]) -> None:
        self.stages = list(stages)

    @classmethod
    def from_config(cls, config: TieringConfig) -> Tierer:
        rules = [user_rule(rule, i) for i, rule in enumerate(config.rules)]
        return cls([override_rule, *rules, *HEURISTICS])

    def __call__(self, job: Job) -> TierVote:
        for stage in self.stages:
            vote = stage(job)
            if vote is not None:
                return vote
        return default_rule(job)


def classify(items: Iterable[Job | InvalidLine], tierer: Tierer) -> Iterator[dict[str, Any]]:
    """Each job back as its input object plus `tier`, `why` and `confidence`.

    The output is itself a valid input: `tierline classify jobs.jsonl | tierline run -` keeps
    the decisions (the `tier` field is an override). Bad lines come back as error records.
    """
    for item in items:
        if isinstance(item, InvalidLine):
            yield Result.invalid(item).to_dict()
            continue
        vote = tierer(item)
        yield {
            **item.raw,
            "tier": vote.tier,
            "why": vote.why,
            "confidence": round(vote.confidence, 3),
        }
