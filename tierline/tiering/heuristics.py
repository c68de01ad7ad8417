"""Built-in heuristics: cheap, explainable signals that decide the clear cases.

Each rule is a pure callable `Job -> TierVote | None`; `None` means "no opinion". The pipeline
asks them in order and the first vote wins (see pipeline.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..jobs import Job
from .vote import TierVote

__all__ = ["HEURISTICS", "keyword_score_rule", "task_hint_rule"]

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


_SIGNALS: list[tuple[int, float, str, re.Pattern[str]]] = [
    (
        3,
        3.0,
        "proof or theorem",
        re.compile(r"\b(prove|proof|theorem|lemma|rigorous(ly)?)\b", re.I),
    ),
    (
        3,
        3.0,
        "competition or research",
        re.compile(
            r"\b(olympiad|imo|putnam|aime|open problem|research[- ]level|novel (algorithm|approach))\b",
            re.I,
        ),
    ),
    (
        3,
        2.0,
        "hard algorithmic",
        re.compile(
            r"\b(O\(n ?log ?n\)|np-hard|dynamic programming|10\^5|10\^9|constraints:)", re.I
        ),
    ),
    (
        2,
        2.0,
        "code",
        re.compile(
            r"```|\bdef \w+\(|\bclass \w+[:(]|\bfunction \w+\(|#include|\bpublic static\b", re.I
        ),
    ),
    (
        2,
        2.0,
        "writes code",
        re.compile(
            r"\b(write|implement|refactor|debug|optimi[sz]e) (a |an |the )?(python |javascript |rust |go |sql |c\+\+ |java )?(function|class|script|program|module|query|api|test)",
            re.I,
        ),
    ),
    (
        2,
        1.5,
        "multi-step reasoning",
        re.compile(
            r"\b(step[- ]by[- ]step|trade-?offs?|design (a|an)|compare and contrast|plan (a|an))\b",
            re.I,
        ),
    ),
    (
        2,
        1.5,
        "nuanced writing",
        re.compile(
            r"\b(essay|story|poem|screenplay|persuasive|cover letter|speech|in the style of)\b",
            re.I,
        ),
    ),
    (2, 1.0, "math notation", re.compile(r"\$[^$]+\$|\\frac|\\sum|\\int|\\sqrt|\^\{")),
    (1, 2.0, "summarization", re.compile(r"\b(summari[sz]e|summary|tl;?dr|headline)\b", re.I)),
    (
        1,
        2.0,
        "classification",
        re.compile(
            r"\b(classify|categori[sz]e|sentiment|label (this|the)|which (category|label)|positive or negative|spam or not)\b",
            re.I,
        ),
    ),
    (
        1,
        2.0,
        "extraction",
        re.compile(
            r"\b(extract|pull out|list (all|the) (names|dates|entities)|as json|into json)\b", re.I
        ),
    ),
    (
        1,
        1.0,
        "short question",
        re.compile(
            r"^\s*(what|who|when|where|which|how many|is|are|does|do|can)\b[^\n]{0,160}\?\s*$", re.I
        ),
    ),
]


def keyword_score_rule(job: Job) -> TierVote | None:
    """Score keyword, code and math markers per tier; vote for the clear winner."""
    text = job.text
    scores = {1: 0.0, 2: 0.0, 3: 0.0}
    evidence: dict[int, list[str]] = {1: [], 2: [], 3: []}
    for tier, weight, label, pattern in _SIGNALS:
        if pattern.search(text):
            scores[tier] += weight
            evidence[tier].append(label)
    if len(text) > 6000:  # long inputs with no other signal are usually documents to digest
        scores[2] += 0.5
        evidence[2].append(f"long prompt ({len(text)} chars)")
    best = max(scores, key=lambda t: (scores[t], -t))
    ranked = sorted(scores.values(), reverse=True)
    if ranked[0] == 0:
        return None
    margin = ranked[0] - ranked[1]
    confidence = min(0.95, 0.5 + 0.15 * margin)
    return TierVote(best, "heuristic: " + ", ".join(evidence[best]), confidence, "heuristic")


def default_rule(job: Job) -> TierVote:
    """No signal at all: the cheapest tier, said plainly."""
    return TierVote(1, f"no signal in {len(job.text)} chars; default tier", 0.4, "default")


HEURISTICS: list[Callable[[Job], TierVote | None]] = [task_hint_rule, keyword_score_rule]
