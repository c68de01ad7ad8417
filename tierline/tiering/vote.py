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
    # The classifier's calibrated (p1, p2, p3); None for votes no probability stands behind.
    probs: tuple[float, float, float] | None = None

    def escalation_score(self, tier: int) -> float:
        """How strongly this vote asks for ``tier`` or above (a router's score, in [0, 1]).

        The classifier's probability mass on those tiers; 1 or 0 for a rule's hard decision.
        """
        if self.probs is None:
            return 1.0 if self.tier >= tier else 0.0
        return float(sum(self.probs[tier - 1 :]))
