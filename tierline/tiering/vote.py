"""A tiering decision and the evidence for it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TierVote"]


@dataclass(frozen=True, slots=True)
class TierVote:
    tier: int
    why: str  # readable evidence: the stage that decided and what it saw
    confidence: float  # in [0, 1]
    stage: str  # "override", "rule", "heuristic", "classifier", "judge", "default"
