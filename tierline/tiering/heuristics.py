"""Built-in heuristics: cheap, explainable signals that decide the clear cases.

Only signals that are right nearly every time belong here, because the first vote wins and a
heuristic vote keeps the job from the classifier.

Each rule is a pure callable `Job -> TierVote | None`; `None` means "no opinion". The pipeline
asks them in order and the first vote wins (see pipeline.py).
"""

from __future__ import annotations

from collections.abc import Callable

from ..jobs import Job
from .vote import TierVote

__all__ = [
    "HEURISTICS",
    "default_rule",
    "default_vote",
    "empty_prompt_rule",
    "task_hint_rule",
]

# A job's `task` hint, normalised to lower case, mapped to the tier it names.
TASK_TIERS: dict[str, int] = {
    **dict.fromkeys(
        (
            "summarize",
            "summarise",
            "summarization",
            "summary",
            "classify",
            "classification",
            "extract",
            "extraction",
            "qa",
            "simple_qa",
            "question",
            "translate",
            "translation",
            "tag",
            "label",
            "sentiment",
        ),
        1,
    ),
    **dict.fromkeys(
        (
            "code",
            "coding",
            "codegen",
            "code_generation",
            "writing",
            "rewrite",
            "reasoning",
            "analysis",
            "math",
        ),
        2,
    ),
    **dict.fromkeys(("research", "proof", "frontier", "hard", "competition_math"), 3),
}


def task_hint_rule(job: Job) -> TierVote | None:
    """A job that says what it is (`"task": "classify"`) is trusted."""
    if job.task is None:
        return None
    tier = TASK_TIERS.get(job.task.strip().lower())
    if tier is None:
        return None
    return TierVote(tier, f"task hint {job.task!r}", 0.9, "heuristic")


def empty_prompt_rule(job: Job) -> TierVote | None:
    """Nothing to read means nothing hard to do: the cheapest tier, with certainty."""
    # Equivalent to `not job.text.strip()` without joining the text of every job.
    if job.system and job.system.strip():
        return None
    if any(m.content.strip() for m in job.messages if m.role != "assistant"):
        return None
    return TierVote(1, "empty prompt", 1.0, "heuristic")


def default_rule(job: Job) -> TierVote:
    """No signal at all: the cheapest tier, said plainly."""
    return default_vote(len(job.text))


def default_vote(chars: int) -> TierVote:
    """The default vote on a text of ``chars`` characters."""
    return TierVote(1, f"no signal in {chars} chars; default tier", 0.4, "default")


# Keyword voting (``prove`` -> 3, ``$...$`` -> 2, a short question -> 1, ...) was measured and
# dropped: on the training corpus "proof or theorem" was right 18% of the time it fired, "short
# question" 22%, "math notation" 33% (docs/tiering.md), and a vote here pre-empts the
# classifier, which weighs the same words together with everything else in the prompt.
HEURISTICS: list[Callable[[Job], TierVote | None]] = [task_hint_rule, empty_prompt_rule]
